"""The shipped toy CLIP (offline loading, processor, pipeline, pinned zero-shot accuracy) and its pretraining
(loss against a hand-written reference, bit-identical reruns, atomic save).

Run: python -m pytest tests/test_toy_clip.py -x -q
"""

import math
import os

import numpy as np
import pytest
import torch
from safetensors import safe_open
from transformers import CLIPModel, CLIPProcessor, pipeline

from peft_vlprompt.toy import COLORS, OBJECT_CLASSES, SHAPES, load_toy_clip, toy_clip_path, toy_splits
from peft_vlprompt.toy.pretrain import (
    ToyPretrainConfig,
    caption_positives,
    contrastive_loss,
    normalize_images,
    pretrain_toy_clip,
    sample_caption,
    save_toy_clip,
    toy_clip_config,
)

# Zero-shot top-1 (%) of the shipped model, "a photo of a {}.", objects task, photo domain, test split seed 0,
# 5 images per class (240 images). Measured with:
#   python examples/toy/pretrain_toy_clip.py --eval_only --eval_tasks objects --eval_domains photo --n_test_per_class 5
EXPECTED_OBJECTS_PHOTO_5 = 45.42
# the shipped model's logit scale after pretraining: initialised at 1/0.07 = 14.29, clamped at 100, at the cap
# from step 2,000 (CLIP's learned value)
EXPECTED_LOGIT_SCALE = 100.00

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


@pytest.fixture(scope="module")
def toy():
    return load_toy_clip()


def test_shipped_directory_is_complete_and_small():
    files = set(os.listdir(toy_clip_path()))
    expected = {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"}
    assert expected | {"preprocessor_config.json"} <= files
    total = sum(os.path.getsize(os.path.join(toy_clip_path(), f)) for f in files)
    assert total <= 15 * 1024**2, total


def test_shipped_model_config(toy):
    model, _ = toy
    assert isinstance(model, CLIPModel)
    text, vision = model.config.text_config, model.config.vision_config
    assert text.vocab_size == 49408 and text.max_position_embeddings == 77
    assert (text.eos_token_id, text.bos_token_id, text.pad_token_id) == (49407, 49406, 49407)
    assert vision.image_size == 32
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for tower in (text, vision):  # toy CLIP v2: 12 layers per tower, OpenAI's 64-dim heads
        assert tower.num_hidden_layers == 12 and tower.hidden_size // tower.num_attention_heads == 64
    assert model.logit_scale.exp().item() == pytest.approx(EXPECTED_LOGIT_SCALE, abs=0.01)


def test_processor_tokenizes_and_normalises_like_clip(toy):
    _, processor = toy
    assert isinstance(processor, CLIPProcessor)
    ids = processor.tokenizer("a photo of a cat.")["input_ids"]
    assert ids == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    images = [np.random.default_rng(i).integers(0, 256, (32, 32, 3), dtype=np.uint8) for i in range(3)]
    from PIL import Image

    pixels = processor.image_processor(images=[Image.fromarray(a) for a in images], return_tensors="pt")
    pixels = pixels["pixel_values"].numpy()
    ref = ((np.stack(images) / 255.0 - CLIP_MEAN) / CLIP_STD).transpose(0, 3, 1, 2)
    assert pixels.shape == (3, 3, 32, 32)
    np.testing.assert_allclose(pixels, ref, atol=1e-5)
    # the pretraining loop feeds exactly what the processor produces
    np.testing.assert_allclose(normalize_images(np.stack(images)).numpy(), ref, atol=1e-5)


def _features(model, processor, images, texts):
    text = processor.tokenizer(texts, padding=True, return_tensors="pt")
    pixels = processor.image_processor(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        t = model.get_text_features(**text)
        v = model.get_image_features(pixel_values=pixels)
    t = getattr(t, "pooler_output", t)
    v = getattr(v, "pooler_output", v)
    return v / v.norm(dim=-1, keepdim=True), t / t.norm(dim=-1, keepdim=True)


def test_pipeline_agrees_with_the_model(toy):
    model, processor = toy
    pipe = pipeline("zero-shot-image-classification", model=toy_clip_path())
    image = toy_splits("objects", "photo", 0, 0, 1, seed=0)["test"][5]["image"]
    labels = ["red circle", "blue star", "green moon", "yellow heart"]
    out = pipe(image, candidate_labels=labels, hypothesis_template="a photo of a {}.")
    v, t = _features(model, processor, [image], [f"a photo of a {c}." for c in labels])
    probs = torch.softmax(model.logit_scale.exp() * v @ t.T, dim=-1)[0]
    got = {d["label"]: d["score"] for d in out}
    for label, p in zip(labels, probs.tolist()):
        assert got[label] == pytest.approx(p, abs=1e-4)


def test_zero_shot_accuracy_is_pinned(toy):
    model, processor = toy
    test = toy_splits("objects", "photo", 0, 0, 5, seed=0)["test"]
    names = test.features["label"].names
    v, t = _features(model, processor, list(test["image"]), [f"a photo of a {c}." for c in names])
    acc = 100.0 * (v @ t.T).argmax(-1).eq(torch.tensor(list(test["label"]))).float().mean().item()
    assert abs(acc - EXPECTED_OBJECTS_PHOTO_5) <= 2.0, acc
    assert acc > 3 * 100 / len(names)  # far above chance (2.1%)


def _reference_loss(logits, positives):
    # symmetric soft-target InfoNCE written out element by element: rows (image -> captions) and columns
    # (caption -> images), each spreading its target evenly over its positives
    n = len(positives)
    total = 0.0
    for i in range(n):
        lse = math.log(sum(math.exp(logits[i][j]) for j in range(n)))
        pos = [j for j in range(n) if positives[i][j]]
        total += sum(-(logits[i][j] - lse) / len(pos) for j in pos) / n / 2
    for j in range(n):
        lse = math.log(sum(math.exp(logits[i][j]) for i in range(n)))
        pos = [i for i in range(n) if positives[i][j]]
        total += sum(-(logits[i][j] - lse) / len(pos) for i in pos) / n / 2
    return total


def test_contrastive_loss_matches_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 6, generator=gen, dtype=torch.float64) * 3
    positives = torch.eye(6, dtype=torch.bool)
    positives[0, 2] = positives[3, 1] = positives[3, 5] = True  # not symmetric: rows and columns differ
    got = contrastive_loss(logits, positives).item()
    assert got == pytest.approx(_reference_loss(logits.tolist(), positives.tolist()), rel=1e-10)
    # only the pairs -> plain CLIP loss
    plain = 0.5 * (
        torch.nn.functional.cross_entropy(logits, torch.arange(6))
        + torch.nn.functional.cross_entropy(logits.T, torch.arange(6))
    )
    assert contrastive_loss(logits, torch.eye(6, dtype=torch.bool)).item() == pytest.approx(plain.item(), rel=1e-10)


def test_an_image_s_positives_are_its_caption_and_every_true_description():
    names = [f"{COLORS[c]} {SHAPES[s]}" for s, c in OBJECT_CLASSES]
    red_circle, blue_circle, red_star = names.index("red circle"), names.index("blue circle"), names.index("red star")
    classes = [red_circle, blue_circle, red_star, red_circle]
    keys = ["full:red circle", "shape:circle", "color:red", "full:blue star"]  # the last one is a wrong caption
    expected = [
        [1, 1, 1, 0],  # red circle: "red circle", "circle", "red"; not "blue star"
        [0, 1, 0, 0],  # blue circle: "circle" only
        [0, 0, 1, 0],  # red star: "red"
        [1, 1, 1, 1],  # red circle with a wrong caption: its own pair stays a positive (noisy alt-text)
    ]
    assert caption_positives(classes, keys).int().tolist() == expected


def test_captions_name_the_class_or_a_part_of_it():
    cfg = ToyPretrainConfig(wrong_caption_prob=0.0, partial_caption_prob=0.5)
    rng = np.random.default_rng(0)
    kinds = set()
    for _ in range(200):
        caption, key = sample_caption(rng, 0, "sketch", cfg)  # class 0 = "red circle"
        kind, phrase = key.split(":")
        kinds.add(kind)
        assert phrase in caption and phrase in ("red circle", "circle", "red")
    assert kinds == {"full", "shape", "color"}


def test_batches_hold_each_class_at_most_once():
    # the default: one true caption per image in a batch, as in CLIP's web batches (see pretrain.py's docstring)
    from peft_vlprompt.toy.pretrain import _batch_images

    cfg = ToyPretrainConfig(image_pool_size=0)
    assert cfg.distinct_classes and cfg.batch_size == len(OBJECT_CLASSES)
    for step in range(3):
        _, classes, _ = _batch_images(cfg, np.random.default_rng(step), None)
        assert sorted(classes) == list(range(len(OBJECT_CLASSES)))
    # from an image pool: every image of the batch is a pool image of the class it is labelled with
    pool_cfg = ToyPretrainConfig(batch_size=500, image_pool_size=0, distinct_classes=False)
    images, classes, domains = _batch_images(pool_cfg, np.random.default_rng(0), None)
    members = [np.flatnonzero(np.asarray(classes) == k) for k in range(len(OBJECT_CLASSES))]
    for step in range(3):
        batch, got, got_domains = _batch_images(
            ToyPretrainConfig(batch_size=20), np.random.default_rng(step), (images, classes, domains, members)
        )
        assert len(got) == 20 and len(set(got)) == 20
        for image, k, d in zip(batch, got, got_domains):
            i = next(i for i in members[k] if np.array_equal(images[i], image))
            assert domains[i] == d
    # without the rule, 48 uniform draws repeat classes
    repeats = ToyPretrainConfig(image_pool_size=0, distinct_classes=False)
    assert len(set(_batch_images(repeats, np.random.default_rng(0), None)[1])) < len(OBJECT_CLASSES)
    with pytest.raises(ValueError, match="`batch_size` must be <= 48 .* with `distinct_classes`, got 64"):
        ToyPretrainConfig(batch_size=64)
    ToyPretrainConfig(batch_size=64, distinct_classes=False)
    with pytest.raises(ValueError, match="`image_pool_size` 4 holds .* object classes, fewer than `batch_size` 12"):
        pretrain_toy_clip(_tiny_cfg(image_pool_size=4))


def _tiny_cfg(**kw):
    base = dict(
        steps=3,
        batch_size=12,
        text_layers=1,
        vision_layers=1,
        text_width=16,
        vision_width=16,
        patch_size=8,
        projection_dim=16,
        head_dim=8,
        warmup_steps=1,
        log_every=1,
        image_pool_size=0,
        num_threads=1,
    )
    return ToyPretrainConfig(**{**base, **kw})


def test_pretraining_is_bit_reproducible():
    # the image-pool path, as in the shipped run (the fresh-image path runs in test_save_round_trip)
    a = pretrain_toy_clip(_tiny_cfg(image_pool_size=24)).state_dict()
    b = pretrain_toy_clip(_tiny_cfg(image_pool_size=24)).state_dict()
    c = pretrain_toy_clip(_tiny_cfg(image_pool_size=24, seed=1)).state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # training moved the weights (compare with an untrained model of the same seed 0)
    torch.manual_seed(0)
    untrained = CLIPModel(toy_clip_config(_tiny_cfg())).state_dict()
    assert not torch.equal(a["visual_projection.weight"], untrained["visual_projection.weight"])
    assert torch.get_num_threads() > 0 and not torch.are_deterministic_algorithms_enabled()


def test_save_round_trip(tmp_path):
    model = pretrain_toy_clip(_tiny_cfg(steps=1))
    save_toy_clip(model, str(tmp_path), _tiny_cfg(steps=1))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    loaded = CLIPModel.from_pretrained(str(tmp_path))
    ref = model.state_dict()
    # stored as float16 (scalars as float32), loaded as float32
    with safe_open(os.path.join(tmp_path, "model.safetensors"), "pt") as f:
        assert f.get_tensor("text_projection.weight").dtype == torch.float16
        assert f.get_tensor("logit_scale").dtype == torch.float32
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(ref[k] if ref[k].numel() == 1 else ref[k].half().float(), v), k
    assert CLIPProcessor.from_pretrained(str(tmp_path)).tokenizer("X")["input_ids"] == [49406, 343, 49407]


def test_config_validation():
    with pytest.raises(ValueError, match="`steps` must be >= 1, got 0"):
        ToyPretrainConfig(steps=0)
    with pytest.raises(ValueError, match="`domains` must be a non-empty subset"):
        ToyPretrainConfig(domains=["xray"], domain_weights=[1.0])
    with pytest.raises(ValueError, match="`domain_weights` must be one weight"):
        ToyPretrainConfig(domain_weights=[1.0])
    with pytest.raises(ValueError, match="`patch_size` must divide 32, got 5"):
        ToyPretrainConfig(patch_size=5)


def test_model_has_clip_heads_and_temperature():
    config = toy_clip_config(ToyPretrainConfig())
    for tower in (config.text_config, config.vision_config):
        assert tower.num_hidden_layers == 12
        assert tower.hidden_size // tower.num_attention_heads == 64  # OpenAI's head size
    assert config.logit_scale_init_value == pytest.approx(math.log(1 / 0.07))
    with pytest.raises(ValueError, match="multiples of `head_dim` \\(64\\), got 48, 64"):
        ToyPretrainConfig(text_width=48)
