"""The toy SigLIP's pretraining parts: the sigmoid loss against a hand-written reference, the word-level tokenizer,
bit-identical reruns and the saved folder loading through AutoModel/AutoProcessor (tiny configs; the shipped model
is pinned in `test_toy_siglip_shipped.py`).

Run: python -m pytest tests/test_toy_siglip.py -x -q
"""

import math
import os

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoProcessor, SiglipModel

from peft_vlprompt.toy.families import SIGLIP_TEXT_LENGTH, sigmoid_loss, toy_vocabulary
from peft_vlprompt.toy.pretrain import ToyPretrainConfig, normalize_images, pretrain_toy_clip, save_toy_clip


def _reference_sigmoid_loss(logits, positives):
    # SigLIP (arXiv:2303.15343, Algorithm 1) with the given positive pairs, element by element
    n = len(positives)
    total = 0.0
    for i in range(n):
        for j in range(n):
            z = 1.0 if positives[i][j] else -1.0
            total += math.log(1.0 + math.exp(-z * logits[i][j]))
    return total / n


def test_sigmoid_loss_matches_reference():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 6, generator=gen, dtype=torch.float64) * 3 - 2
    positives = torch.eye(6, dtype=torch.bool)
    positives[0, 2] = positives[3, 1] = True
    got = sigmoid_loss(logits, positives).item()
    assert got == pytest.approx(_reference_sigmoid_loss(logits.tolist(), positives.tolist()), rel=1e-10)


def test_vocabulary_covers_the_world_and_the_templates():
    vocab = set(toy_vocabulary())
    for word in ("a", "photo", "of", "red", "circle", "night", "sketch", "x", ".", "itap"):
        assert word in vocab, word


def _tiny_cfg(**kw):
    base = dict(family="siglip", steps=3, batch_size=12, text_layers=1, vision_layers=1, text_width=16,
                vision_width=16, head_dim=8, patch_size=8, projection_dim=16, warmup_steps=1, log_every=1,
                image_pool_size=24, num_threads=1)  # fmt: skip
    return ToyPretrainConfig(**{**base, **kw})


def test_pretraining_is_bit_reproducible_and_trains():
    a = pretrain_toy_clip(_tiny_cfg()).state_dict()
    b = pretrain_toy_clip(_tiny_cfg()).state_dict()
    c = pretrain_toy_clip(_tiny_cfg(seed=1)).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    # SigLIP's initialisation (log 10, -10), then moved by the sigmoid loss: Adam moves a parameter by at most about
    # its learning rate per step (here 3 steps at the temperature's rate)
    cfg = _tiny_cfg()
    bound = 3 * cfg.learning_rate * cfg.temperature_lr_multiplier * 1.01
    assert 0 < abs(a["logit_scale"].item() - math.log(10)) <= bound
    assert 0 < abs(a["logit_bias"].item() + 10) <= bound


def test_saved_folder_loads_through_the_auto_classes(tmp_path):
    model = pretrain_toy_clip(_tiny_cfg(steps=1))
    save_toy_clip(model, str(tmp_path), _tiny_cfg(steps=1))
    assert not [f for f in os.listdir(tmp_path) if f.startswith(".tmp")]
    loaded = AutoModel.from_pretrained(str(tmp_path))
    processor = AutoProcessor.from_pretrained(str(tmp_path))
    assert isinstance(loaded, SiglipModel)
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        assert v.dtype == torch.float32
        assert torch.equal(ref[k] if ref[k].numel() == 1 else ref[k].half().float(), v), k
    # no start token, "</s>" appended and used as padding, ids only (SigLIP runs its text without a mask)
    words = ["<unk>", "</s>", *toy_vocabulary()]
    text = processor.tokenizer(["A photo of a X."], padding="max_length", return_tensors="pt")
    assert list(text) == ["input_ids"]
    expected = [words.index(w) for w in ("a", "photo", "of", "a", "x", ".", "</s>")]
    assert text["input_ids"][0].tolist() == expected + [1] * (SIGLIP_TEXT_LENGTH - len(expected))
    # the processor normalises images as the pretraining loop did (mean = std = 0.5)
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    pixels = processor.image_processor(images=[image], return_tensors="pt")["pixel_values"]
    torch.testing.assert_close(pixels, normalize_images(image[None], (0.5,) * 3, (0.5,) * 3), atol=1e-5, rtol=0)


# -- the shipped toy SigLIP ---------------------------------------------------------------------------------------
# Zero-shot top-1 (%), "a photo of a {}.", objects task, photo domain, test split seed 0, 5 images per class.
# Measured with: python examples/toy/pretrain_toy_clip.py --eval_only --model_path peft_vlprompt/toy/toy_siglip
#   --eval_tasks objects --eval_domains photo --n_test_per_class 5
EXPECTED_OBJECTS_PHOTO_5 = 51.67


def test_shipped_toy_siglip_loads_offline_small_and_pinned():
    from peft_vlprompt.backbones import backbone_for
    from peft_vlprompt.toy import load_toy_siglip, toy_siglip_path, toy_splits
    from peft_vlprompt.toy.zeroshot import zero_shot_accuracy

    files = os.listdir(toy_siglip_path())
    assert sum(os.path.getsize(os.path.join(toy_siglip_path(), f)) for f in files) <= 15 * 1024**2
    model, processor = load_toy_siglip()
    assert isinstance(model, SiglipModel) and backbone_for(model).family == "siglip"
    assert all(p.dtype == torch.float32 for p in model.parameters())
    test = toy_splits("objects", "photo", 0, 0, 5, seed=0)["test"]
    acc = zero_shot_accuracy(model, processor, test)
    assert abs(acc - EXPECTED_OBJECTS_PHOTO_5) <= 2.0, acc
    assert acc > 3 * 100 / 48  # far above chance
