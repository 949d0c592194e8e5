"""PromptClassifier: padding, caching and invalidation, class-name swaps, chunking, predict."""

import numpy as np
import torch
from peft import get_peft_model
from PIL import Image
from transformers import CLIPImageProcessor

from peft_vlprompt import CoOpConfig, PromptClassifier
from tests.tiny import IMAGE_SIZE, pixels, tiny_clip, tokenizer

NAMES = ["cat", "golden retriever", "sea lion", "dog"]


def coop_model(**kwargs):
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4, **kwargs))
    torch.manual_seed(11)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_()
    return model


def test_padding_to_longest_equals_padding_to_77():
    model = coop_model()
    clf = PromptClassifier(model, tokenizer(), NAMES).eval()
    config = clf.prompt_config()
    short = clf.tokenize(clf.prompts(config), config)
    full = tokenizer()(clf.prompts(config), padding="max_length", max_length=77, return_tensors="pt")["input_ids"]
    assert short.shape[1] < 77 and full.shape[1] == 77
    torch.testing.assert_close(clf.encode_text(short), clf.encode_text(full), atol=1e-6, rtol=0)


def test_text_features_are_cached_in_eval_and_invalidated_by_a_step():
    model = coop_model()
    clf = PromptClassifier(model, tokenizer(), NAMES).eval()
    first = clf.text_features()
    assert clf.text_features() is first  # cached
    ctx = next(p for p in model.parameters() if p.requires_grad)
    with torch.no_grad():
        # an in-place optimizer-like update bumps the tensor version; a random step, since a constant shift of every
        # dimension is removed by the LayerNorms and would leave the features unchanged
        ctx.add_(torch.randn(ctx.shape, generator=torch.Generator().manual_seed(0)))
    second = clf.text_features()
    assert second is not first and not torch.allclose(first, second)
    with model.disable_adapter():
        zero_shot = clf.text_features()
    assert not torch.allclose(zero_shot, second)
    torch.testing.assert_close(zero_shot, clf.zero_shot_text_features())
    assert clf.text_features() is not zero_shot  # back to the adapter


def test_training_mode_recomputes_with_gradients():
    clf = PromptClassifier(coop_model(), tokenizer(), NAMES).train()
    assert clf.text_features().requires_grad


def test_class_name_swap_base_to_new():
    model = coop_model()
    clf = PromptClassifier(model, tokenizer(), NAMES[:2]).eval()
    base_logits = clf(pixels())
    clf.set_classnames(NAMES[2:])
    new_logits = clf(pixels())
    fresh = PromptClassifier(model, tokenizer(), NAMES[2:]).eval()(pixels())
    assert base_logits.shape == new_logits.shape == (2, 2)
    assert torch.equal(new_logits, fresh)


def test_chunking_over_classes_is_exact_for_unified_and_class_specific():
    for kwargs in ({}, {"class_specific": True, "n_classes": len(NAMES)}):
        model = coop_model(**kwargs)
        whole = PromptClassifier(model, tokenizer(), NAMES, class_chunk_size=100).eval()(pixels())
        chunked = PromptClassifier(model, tokenizer(), NAMES, class_chunk_size=3).eval()(pixels())
        torch.testing.assert_close(whole, chunked, atol=1e-6, rtol=0)


def test_plain_clip_is_zero_shot_with_the_template():
    base = tiny_clip()
    clf = PromptClassifier(base, tokenizer(), ["cat", "sea_lion"], template="a photo of a {}, a type of pet.").eval()
    assert clf.prompts(clf.prompt_config()) == [
        "a photo of a cat, a type of pet.",
        "a photo of a sea lion, a type of pet.",
    ]
    ids = tokenizer()(clf.prompts(None), padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        expected = base(input_ids=ids, pixel_values=pixels()).logits_per_image
    torch.testing.assert_close(clf(pixels()), expected, atol=1e-5, rtol=0)


def test_predict_with_image_processor():
    processor = CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    clf = PromptClassifier(coop_model(), tokenizer(), NAMES, image_processor=processor)
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)) for _ in range(3)]
    names = clf.predict(images)
    indices = clf.predict(images, return_index=True)
    expected = clf.eval()(processor(images=images, return_tensors="pt")["pixel_values"]).argmax(-1).tolist()
    assert indices == expected and names == [NAMES[i] for i in expected]
