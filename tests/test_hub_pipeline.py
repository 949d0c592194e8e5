"""Trained prompts in `transformers.pipeline("zero-shot-image-classification")` give `PromptClassifier`'s answers."""

import numpy as np
import pytest
import torch
from peft import get_peft_model
from PIL import Image
from transformers import CLIPImageProcessor, pipeline

from peft_vlprompt import CoOpConfig, PromptClassifier
from peft_vlprompt.hub import hypothesis_template, prompt_pipeline
from tests.tiny import IMAGE_SIZE, tiny_clip, tokenizer

NAMES = ["cat", "dog", "sea_lion", "aeroplane", "red fox"]


def processor():
    return CLIPImageProcessor(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )


def images(n=6):
    """Noisy images of different mean colours (plain noise looks the same to tiny CLIP)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, (n, 1, 1, 3))
    return [Image.fromarray(np.clip(c + rng.normal(0, 60, (40, 48, 3)), 0, 255).astype(np.uint8)) for c in colours]


def coop_model(**config):
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4, **config)).eval()
    torch.manual_seed(11)
    # large context so the prompts decide the ranking (a small init barely moves tiny CLIP's logits)
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_(std=2.0)
    return model


def classifier_probs(model, names, template="a photo of a {}."):
    clf = PromptClassifier(model, tokenizer(), names, template=template).eval()
    with torch.no_grad():
        return clf(processor()(images=images(), return_tensors="pt")["pixel_values"]).softmax(-1)


def pipeline_probs(outputs, names):
    return torch.tensor([[{d["label"]: d["score"] for d in out}[name] for name in names] for out in outputs])


def test_hypothesis_templates_reproduce_the_placeholder_prompts():
    # CoOp's prompt of class c, written out by hand: 4 placeholders, then / around / before the class name
    assert hypothesis_template(coop_model()) == "X X X X {}."
    assert hypothesis_template(coop_model(class_token_position="front")) == "{} X X X X."
    assert hypothesis_template(coop_model(class_token_position="middle")) == "X X {} X X."
    model = coop_model()
    with model.disable_adapter():
        assert hypothesis_template(model, "a photo of a {}, a type of pet.") == "a photo of a {}, a type of pet."


def test_stock_pipeline_with_the_placeholder_template_matches_prompt_classifier():
    model = coop_model()
    names = [n for n in NAMES if "_" not in n]  # the stock pipeline uses labels verbatim
    expected = classifier_probs(model, names)
    assert len(set(expected.argmax(-1).tolist())) > 1  # the check below can tell predictions apart
    pipe = pipeline("zero-shot-image-classification", model=model, tokenizer=tokenizer(), image_processor=processor())
    got = pipeline_probs(pipe(images(), candidate_labels=names, hypothesis_template=hypothesis_template(model)), names)
    assert torch.allclose(got, expected, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    # the stock template ignores the learned context, so it answers differently
    stock = pipeline_probs(pipe(images(), candidate_labels=names), names)
    assert not torch.allclose(stock, expected, atol=1e-3)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_prompt_pipeline_matches_prompt_classifier(batch_size):
    model = coop_model()
    expected = classifier_probs(model, NAMES)
    pipe = prompt_pipeline(model, tokenizer(), processor(), batch_size=batch_size)
    outputs = pipe(images(), candidate_labels=NAMES)
    assert [out[0]["label"] for out in outputs] == [NAMES[i] for i in expected.argmax(-1).tolist()]
    assert torch.allclose(pipeline_probs(outputs, NAMES), expected, atol=1e-6)


def test_prompt_pipeline_follows_disable_adapter_and_class_specific_context():
    model = coop_model()
    pipe = prompt_pipeline(model, tokenizer(), processor(), template="a photo of a {}, a type of animal.")
    with model.disable_adapter():
        zero_shot = classifier_probs(model, NAMES, template="a photo of a {}, a type of animal.")
        got = pipeline_probs(pipe(images(), candidate_labels=NAMES), NAMES)
    assert torch.allclose(got, zero_shot, atol=1e-6)

    csc = coop_model(class_specific=True, n_classes=3)
    names = NAMES[:3]
    got = pipeline_probs(prompt_pipeline(csc, tokenizer(), processor())(images(), candidate_labels=names), names)
    assert torch.allclose(got, classifier_probs(csc, names), atol=1e-6)
    with pytest.raises(ValueError, match="class-specific context"):
        prompt_pipeline(csc, tokenizer(), processor())(images(1), candidate_labels=NAMES)


@pytest.mark.parametrize("method", ["cocoop", "maple"])
def test_prompt_pipeline_matches_prompt_classifier_for_other_methods(method):
    # CoCoOp's prompts depend on the image (the stock pipeline cannot feed that); MaPLe prompts both towers
    from peft_vlprompt import CoCoOpConfig
    from peft_vlprompt.tuners.deep_prompt import maple_preset

    clip = tiny_clip()
    config = CoCoOpConfig() if method == "cocoop" else maple_preset(clip, depth=2)
    model = get_peft_model(clip, config).eval()
    torch.manual_seed(3)
    for p in model.parameters():
        if p.requires_grad:
            p.data.normal_(std=0.5)
    expected = classifier_probs(model, NAMES)
    got = pipeline_probs(prompt_pipeline(model, tokenizer(), processor())(images(), candidate_labels=NAMES), NAMES)
    assert torch.allclose(got, expected, atol=1e-6)
    if method == "cocoop":
        with pytest.raises(ValueError, match="conditions its prompts on the image"):
            hypothesis_template(model)
    else:  # MaPLe's text is the template with its first words replaced by the context: the stock pipeline works
        pipe = pipeline(
            "zero-shot-image-classification", model=model, tokenizer=tokenizer(), image_processor=processor()
        )
        names = [n for n in NAMES if "_" not in n]
        got = pipeline_probs(
            pipe(images(), candidate_labels=names, hypothesis_template=hypothesis_template(model)), names
        )
        assert torch.allclose(got, classifier_probs(model, names), atol=1e-5)
