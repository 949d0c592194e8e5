"""CoCoOp: batched image-conditioned prompts against a hand-written per-image loop; save/load; the forward contract."""

import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_vlprompt import CoCoOpConfig, PromptClassifier
from peft_vlprompt.tuners.cocoop import image_conditioning
from tests.reference_text import normalize, text_feature
from tests.tiny import PROJ_DIM, TEXT_WIDTH, pixels, tiny_clip, tokenizer

CLASSNAMES = ["cat", "golden retriever", "sea lion", "dog"]
SOS, EOS, PERIOD = 49406, 49407, 269
EMBEDDING = "base_model.model.text_model.embeddings.token_embedding"


def cocoop_model(seed: int = 7, **kwargs):
    """CoCoOp on a tiny CLIP, with context and meta-net moved away from their init (non-trivial shifts)."""
    model = get_peft_model(tiny_clip(), CoCoOpConfig(**kwargs))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=generator))
    return model


def layer_of(model):
    return model.base_model.model.text_model.embeddings.token_embedding


def reference_logits(model, images: torch.Tensor, position: str = "end") -> torch.Tensor:
    """CoCoOp as the paper's loop: for each image, shift the context by the meta-net, encode all classes."""
    base = tiny_clip()  # same seed -> the frozen weights the adapter wraps
    layer = layer_of(model)
    ctx = layer.coop_ctx["default"].detach()
    fc1, fc2 = layer.cocoop_meta_fc1["default"], layer.cocoop_meta_fc2["default"]
    w1, b1, w2, b2 = (t.detach() for t in (fc1.weight, fc1.bias, fc2.weight, fc2.bias))
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    with torch.no_grad():
        image = normalize(base.get_image_features(pixel_values=images).pooler_output)
    rows = []
    for f in image:
        shift = torch.clamp(w1 @ f + b1, min=0) @ w2.T + b2  # meta-net by hand: Linear -> ReLU -> Linear
        image_ctx = ctx + shift  # the same shift for every context vector
        feats = []
        for name in CLASSNAMES:
            name_emb = emb[tokenizer()(name, add_special_tokens=False)["input_ids"]]
            half = image_ctx.shape[0] // 2
            parts = {
                "end": [image_ctx, name_emb],
                "middle": [image_ctx[:half], name_emb, image_ctx[half:]],
            }[position]
            seq = torch.cat([emb[[SOS]], *parts, emb[[PERIOD, EOS]]])
            feats.append(text_feature(base, seq, eot_position=seq.shape[0] - 1))
        rows.append(base.logit_scale.exp().detach() * normalize(torch.stack(feats)) @ f)
    return torch.stack(rows)


@pytest.mark.parametrize(
    "position,chunk",
    [("end", 256), ("end", 3), ("middle", 5)],  # 3 images x 4 classes: chunks of 3 and 5 rows straddle images
)
def test_batched_logits_match_per_image_loop(position, chunk):
    model = cocoop_model(class_token_position=position)
    images = pixels(batch=3)
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES, class_chunk_size=chunk).eval()
    calls = []
    hook = model.base_model.model.text_model.embeddings.register_forward_hook(  # both text paths embed every row
        lambda m, args, kwargs, out: calls.append(kwargs["input_ids"].shape[0]), with_kwargs=True
    )
    logits = clf(images)
    hook.remove()
    expected = reference_logits(model, images, position)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    assert sum(calls) == 3 * len(CLASSNAMES) and max(calls) <= chunk  # B x C rows, batched, never more per call
    # the shift is image-dependent: a different image order permutes the rows exactly
    torch.testing.assert_close(clf(images.flip(0)), logits.flip(0), atol=1e-5, rtol=0)


def test_manual_conditioning_of_the_hf_text_path():
    model = cocoop_model()
    images = pixels(batch=2)
    expected = reference_logits(model, images)
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()
    config = clf.prompt_config()
    ids = clf.tokenize(clf.prompts(config), config)
    image = clf.image_features(images)
    with torch.no_grad(), image_conditioning(model, image[1:2]):  # one image: shared by all rows
        text = normalize(model.get_text_features(input_ids=ids).pooler_output)
    torch.testing.assert_close(clf.logit_scale() * image[1] @ text.T, expected[1], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="2 images condition the text batch but `row_images` is not set"):
        with image_conditioning(model, image):
            model.get_text_features(input_ids=ids)
    assert layer_of(model).image_features is None  # the context manager restores the state


def test_unconditioned_forward_is_a_clear_error_and_disabled_adapter_is_clip():
    model = cocoop_model()
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES)
    config = clf.prompt_config()
    ids = clf.tokenize(clf.prompts(config), config)
    with pytest.raises(ValueError, match="CoCoOp prompts depend on the image"):
        model(input_ids=ids, pixel_values=pixels())
    with pytest.raises(ValueError, match=re.escape("use `clf(pixel_values)` for logits")):
        clf.text_features()
    template_ids = tokenizer()([f"a photo of a {n}." for n in CLASSNAMES], padding=True, return_tensors="pt")
    with torch.no_grad(), model.disable_adapter():
        ours = model(input_ids=template_ids["input_ids"], pixel_values=pixels()).logits_per_image
        zero_shot = clf.eval()(pixels())
    with torch.no_grad():
        theirs = tiny_clip()(input_ids=template_ids["input_ids"], pixel_values=pixels()).logits_per_image
    assert torch.equal(ours, theirs)
    torch.testing.assert_close(zero_shot, theirs, atol=1e-5, rtol=0)


def test_only_context_and_meta_net_train():
    model = get_peft_model(tiny_clip(), CoCoOpConfig(meta_net_reduction=4))  # 6 hidden units: some are active
    trainable = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trainable == sorted(
        [f"{EMBEDDING}.coop_ctx.default"]
        + [f"{EMBEDDING}.cocoop_meta_fc{i}.default.{w}" for i in (1, 2) for w in ("weight", "bias")]
    )
    layer = layer_of(model)
    hidden = PROJ_DIM // 4
    assert layer.cocoop_meta_fc1["default"].weight.shape == (hidden, PROJ_DIM)
    assert layer.cocoop_meta_fc2["default"].weight.shape == (TEXT_WIDTH, hidden)
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "coop_ctx" not in k and "cocoop_" not in k}
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = F.cross_entropy(clf(pixels(batch=3)), torch.tensor([0, 3, 1]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert sorted(grads) == trainable and all(g.abs().sum() > 0 for g in grads.values())
    optimizer.step()
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())


def test_save_load_round_trip_is_bit_identical(tmp_path):
    model = cocoop_model(n_ctx=6, ctx_init=None, meta_net_reduction=4)
    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert sorted(saved) == sorted(
        [f"{EMBEDDING}.coop_ctx"] + [f"{EMBEDDING}.cocoop_meta_fc{i}.{w}" for i in (1, 2) for w in ("weight", "bias")]
    )
    assert saved[f"{EMBEDDING}.cocoop_meta_fc1.weight"].shape == (PROJ_DIM // 4, PROJ_DIM)
    config = PeftConfig.from_pretrained(tmp_path)
    assert type(config) is CoCoOpConfig and config.n_ctx == 6 and config.meta_net_reduction == 4
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    images = pixels(batch=2)
    before = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    after = PromptClassifier(reloaded, tokenizer(), CLASSNAMES).eval()(images)
    assert torch.equal(before, after)


def test_defaults_follow_the_paper_config():
    config = CoCoOpConfig()
    assert (config.n_ctx, config.ctx_init, config.class_token_position) == (4, "a photo of a", "end")
    assert config.ctx_init_token_ids == [320, 1125, 539, 320] and not config.class_specific
    model = get_peft_model(tiny_clip(), config)
    emb = tiny_clip().text_model.embeddings.token_embedding.weight
    assert torch.equal(layer_of(model).coop_ctx["default"].detach(), emb[[320, 1125, 539, 320]])


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(class_specific=True, n_classes=3), "`class_specific` must be False for CoCoOp"),
        (dict(meta_net_reduction=0), "`meta_net_reduction` must be >= 1, got 0"),
    ],
)
def test_config_errors_name_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CoCoOpConfig(**kwargs)


def test_meta_net_too_small_for_the_backbone():
    with pytest.raises(ValueError, match=re.escape("`meta_net_reduction`=32 leaves no hidden unit")):
        get_peft_model(tiny_clip(), CoCoOpConfig(meta_net_reduction=32))


def test_torch_compile_has_no_graph_break_in_the_conditioned_embedding():
    model = cocoop_model()
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES)
    config = clf.prompt_config()
    ids = clf.tokenize(clf.prompts(config), config)
    image = clf.image_features(pixels(batch=2)).detach()
    rows = torch.arange(2 * len(CLASSNAMES))
    layer = layer_of(model)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    with image_conditioning(model, image, rows // len(CLASSNAMES)):
        torch.testing.assert_close(compiled(ids[rows % len(CLASSNAMES)]), layer(ids[rows % len(CLASSNAMES)]))
