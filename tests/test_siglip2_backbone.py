"""SigLIP 2 (`Siglip2Model`, NaFlex) on fixed-resolution images (offline, tiny random models).

The independent checks are transformers' own: `Siglip2ImageProcessor`'s patches of a fixed-size image, and
`Siglip2Model.get_image_features` on its NaFlex output (patches, all-ones `pixel_attention_mask`, `spatial_shapes`),
against `PromptClassifier`'s (B, 3, H, W) path. `tiny_siglip2` is `tests.tiny_siglip.tiny_siglip` with its weights
copied into a `Siglip2Model` (the conv patch embedding as the linear one over (row, column, channel) patches), so the
SigLIP hand re-statements apply to it; `test_the_copy_is_siglip` checks that copy with the NaFlex inputs above.
"""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from PIL import Image
from torch import nn
from transformers import Siglip2Config, Siglip2ImageProcessor, Siglip2Model, SiglipImageProcessor

from peft_vlprompt import CoOpConfig, PromptClassifier
from peft_vlprompt.backbones import FAMILIES, REFUSED, Siglip2Backbone, backbone_for, family_of, load_backbone
from tests.tiny import pixels
from tests.tiny_siglip import tiny_siglip, word_tokenizer

PATCH, GRID = 8, 4  # a 4x4 grid of 8x8 patches: the 32x32 images of `tests.tiny`


def tiny_siglip2(seed: int = 0, **kwargs) -> Siglip2Model:
    """A `Siglip2Model` holding the weights of `tiny_siglip(seed, **kwargs)` (same sizes; eager attention)."""
    siglip = tiny_siglip(seed, **kwargs)
    text, vision = siglip.config.text_config, siglip.config.vision_config
    config = Siglip2Config(
        text_config=text.to_dict(),
        vision_config=dict(num_patches=GRID * GRID, patch_size=PATCH, hidden_size=vision.hidden_size,
                           intermediate_size=vision.intermediate_size, num_hidden_layers=vision.num_hidden_layers,
                           num_attention_heads=vision.num_attention_heads),
    )  # fmt: skip
    config._attn_implementation = "eager"
    model = Siglip2Model(config).eval()
    state = siglip.state_dict()
    conv = state["vision_model.embeddings.patch_embedding.weight"]  # (d, C, P, P) -> (d, P * P * C)
    state["vision_model.embeddings.patch_embedding.weight"] = conv.permute(0, 2, 3, 1).reshape(conv.shape[0], -1)
    model.load_state_dict(state, strict=True)
    return model


def naflex_processor() -> Siglip2ImageProcessor:
    return Siglip2ImageProcessor(patch_size=PATCH, max_num_patches=GRID * GRID)


def images(n: int = 3, size=(32, 32)) -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(n)]


def by_hand(image: Image.Image) -> torch.Tensor:
    """(3, H, W): rescale to [0, 1], normalise with mean = std = 0.5 (the processors' defaults)."""
    return (torch.from_numpy(np.asarray(image, dtype=np.float32)).permute(2, 0, 1) / 255 - 0.5) / 0.5


def test_patches_are_the_processors_for_a_fixed_size_image():
    ims = images()
    naflex = naflex_processor()(images=ims, return_tensors="pt")
    ours = backbone_for(tiny_siglip2()).vision_inputs(torch.stack([by_hand(im) for im in ims]))
    torch.testing.assert_close(ours["pixel_values"], naflex["pixel_values"], atol=1e-6, rtol=0)
    assert torch.equal(ours["spatial_shapes"], naflex["spatial_shapes"].long())
    assert naflex["pixel_attention_mask"].all() and ours["pixel_attention_mask"] is None  # every patch is valid


def test_classifier_image_features_are_get_image_features_of_the_naflex_input(tmp_path):
    model = tiny_siglip2()
    naflex = naflex_processor()
    naflex.save_pretrained(tmp_path)
    model.save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    loaded, _, fixed = load_backbone(str(tmp_path))
    assert type(loaded) is Siglip2Model and isinstance(fixed, SiglipImageProcessor)
    assert (fixed.size["height"], fixed.size["width"]) == (32, 32) and fixed.resample == naflex.resample
    ims = images()
    expected_inputs = naflex(images=ims, return_tensors="pt")
    with torch.no_grad():
        expected = F.normalize(model.get_image_features(**expected_inputs).pooler_output, dim=-1)
        clf = PromptClassifier(model, word_tokenizer(), ["cat", "x-ray"], image_processor=fixed).eval()
        got = clf.image_features(fixed(images=ims, return_tensors="pt")["pixel_values"])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    assert clf.predict(ims) == [["cat", "x-ray"][i] for i in clf(by_hand_batch(ims)).argmax(-1).tolist()]


def by_hand_batch(ims):
    return torch.stack([by_hand(im) for im in ims])


def test_the_copy_is_siglip():
    # the reference the method tests use: the NaFlex input of a fixed-size image through the copy == SigLIP's tower
    x = pixels()
    patches = x.reshape(2, 3, GRID, PATCH, GRID, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(2, GRID * GRID, -1)
    naflex = dict(pixel_values=patches, pixel_attention_mask=torch.ones(2, GRID * GRID, dtype=torch.long),
                  spatial_shapes=torch.tensor([[GRID, GRID]] * 2))  # fmt: skip
    with torch.no_grad():
        ours = tiny_siglip2().get_image_features(**naflex).pooler_output
        theirs = tiny_siglip().get_image_features(pixel_values=x).pooler_output
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        ids = torch.tensor([[5, 1] + [1] * 14])
        torch.testing.assert_close(tiny_siglip2().get_text_features(input_ids=ids).pooler_output,
                                   tiny_siglip().get_text_features(input_ids=ids).pooler_output)  # fmt: skip


def test_siglip2_is_a_registered_family_with_siglip_facts():
    model = tiny_siglip2()
    backbone = backbone_for(model)
    assert "siglip2" in FAMILIES and "siglip2" not in REFUSED and family_of(model) is Siglip2Backbone
    assert (backbone.patch_size, backbone.num_image_tokens, backbone.max_positions) == (PATCH, GRID * GRID, 16)
    assert (backbone.text_pooling, backbone.text_is_causal, backbone.vision_pooling, backbone.logit_rule) == (
        "last", False, "head", "sigmoid")  # fmt: skip
    assert backbone.vision_head_input == "vision_model.post_layernorm"
    assert not FAMILIES["siglip"].matches(model) and not Siglip2Backbone.matches(tiny_siglip())

    class Wrapper(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.model = inner

    assert backbone_for(Wrapper(model)) == backbone
    assert backbone_for(get_peft_model(tiny_siglip2(), CoOpConfig(n_ctx=4))) == backbone


@pytest.mark.parametrize(
    "shape", [(2, GRID * GRID, 3 * PATCH * PATCH), (2, 3, 30, 32), (2, 1, 32, 32)], ids=["naflex", "side", "gray"]
)
def test_unsupported_inputs_are_refused_with_what_is_accepted(shape):
    clf = PromptClassifier(tiny_siglip2(), word_tokenizer(), ["cat"]).eval()
    with pytest.raises(ValueError, match=r"fixed-resolution images only: `pixel_values` must be \(B, 3, H, W\) "
                                         r"with H and W multiples of the patch size 8, got shape"):  # fmt: skip
        clf.image_features(torch.zeros(shape))


def test_other_sizes_resize_the_position_grid_as_the_model_does():
    # 48x32 images: a 6x4 grid; the model resizes its 4x4 position embeddings to it (spatial_shapes says so)
    model, x = tiny_siglip2(), torch.randn(2, 3, 48, 32, generator=torch.Generator().manual_seed(0))
    inputs = backbone_for(model).vision_inputs(x)
    assert inputs["pixel_values"].shape == (2, 24, 192) and inputs["spatial_shapes"].tolist() == [[6, 4]] * 2
    with torch.no_grad():
        mask = torch.ones(2, 24, dtype=torch.long)
        expected = model.get_image_features(**{**inputs, "pixel_attention_mask": mask}).pooler_output
        got = PromptClassifier(model, word_tokenizer(), ["cat"]).eval().image_features(x)
    torch.testing.assert_close(got, F.normalize(expected, dim=-1), atol=1e-6, rtol=1e-5)


def test_other_families_get_their_pixel_values_unchanged():
    # CLIP, MetaCLIP 2 and SigLIP are fed exactly what they were fed before the hook: the same tensor object
    from tests.tiny import tiny_clip
    from tests.tiny_metaclip2 import tiny_metaclip2

    x = pixels()
    for model in (tiny_clip(), tiny_metaclip2(), tiny_siglip()):
        inputs = backbone_for(model).vision_inputs(x)
        assert list(inputs) == ["pixel_values"] and inputs["pixel_values"] is x


def test_load_backbone_pads_siglip2_text_on_the_right(tmp_path, caplog):
    from transformers import AutoTokenizer

    tiny_siglip2().save_pretrained(tmp_path)
    word_tokenizer().save_pretrained(tmp_path)
    naflex_processor().save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path).padding_side == "left"  # `Siglip2Tokenizer`'s default
    with caplog.at_level("WARNING", logger="peft_vlprompt.backbones.siglip2"):
        _, tokenizer, _ = load_backbone(str(tmp_path))
    assert tokenizer.padding_side == "right" and "pads on the left" in caplog.text
    ids = tokenizer(["a cat"], padding="max_length", max_length=6)["input_ids"][0]
    assert ids[-1] == tokenizer.pad_token_id and ids[0] != tokenizer.pad_token_id  # text first, pads after it


def test_a_left_padding_tokenizer_is_refused():
    # left pads would put the prompt text (and the context slots found by position) behind the padding
    tokenizer = word_tokenizer()
    tokenizer.padding_side = "left"
    with pytest.raises(ValueError, match=r"`tokenizer.padding_side` is 'left': .* set `tokenizer.padding_side = "):
        PromptClassifier(tiny_siglip2(), tokenizer, ["cat"])
