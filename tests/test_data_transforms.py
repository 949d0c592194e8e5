"""CLIP transforms: the test path equals transformers' CLIP image processor; the train path is seeded and shaped."""

import math
import types

import numpy as np
import pytest
import torch
from datasets import Dataset, Features, Image, Value
from PIL import Image as PILImage

from peft_vlprompt.data import collate, make_transform
from peft_vlprompt.data.transforms import random_resized_crop_params

try:  # the PIL backend is what `CLIPImageProcessor` resolves to without torchvision
    from transformers import CLIPImageProcessorPil as Processor
except ImportError:  # pragma: no cover
    from transformers import CLIPImageProcessor as Processor

MEAN = np.array([0.48145466, 0.4578275, 0.40821073], dtype=np.float32)
STD = np.array([0.26862954, 0.26130258, 0.27577711], dtype=np.float32)


def _image(w, h, seed, mode="RGB"):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (h, w, channels), dtype=np.uint8)
    return PILImage.fromarray(arr[..., 0] if mode == "L" else arr, mode)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},  # CLIP's defaults: shortest edge 224, crop 224x224
        {"size": {"shortest_edge": 40}, "crop_size": {"height": 32, "width": 36}},
        {"size": {"shortest_edge": 24}, "crop_size": {"height": 32, "width": 32}},  # crop larger than the image: pads
        {"size": {"height": 30, "width": 50}, "crop_size": {"height": 28, "width": 28}},
    ],
)
def test_test_path_equals_clip_image_processor(kwargs):
    processor = Processor(**kwargs)
    transform = make_transform(processor, train=False, center_crop="processor")
    images = [
        _image(57, 43, 0),
        _image(43, 90, 1),
        _image(64, 64, 2),
        _image(31, 45, 3, "RGBA"),
        _image(50, 33, 4, "L"),
    ]
    expected = processor(images=images, return_tensors="pt")["pixel_values"]
    got = torch.stack(transform({"image": images, "label": [0] * len(images)})["pixel_values"])
    assert got.shape == expected.shape and got.dtype == torch.float32
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_train_path_shape_and_seeded_reproducibility():
    processor = Processor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    images = [_image(60, 45, i) for i in range(4)]

    def run(seed):
        t = make_transform(processor, train=True, generator=torch.Generator().manual_seed(seed))
        return torch.stack(t({"image": images, "label": [0, 1, 2, 3]})["pixel_values"])

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (4, 3, 32, 32) and a.dtype == torch.float32
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    # Without a generator the global torch RNG is used, so torch.manual_seed makes it reproducible too.
    t = make_transform(processor, train=True)
    torch.manual_seed(7)
    d = t({"image": images, "label": [0] * 4})["pixel_values"]
    torch.manual_seed(7)
    e = t({"image": images, "label": [0] * 4})["pixel_values"]
    assert all(torch.equal(x, y) for x, y in zip(d, e))


def test_train_path_full_crop_matches_hand_computation():
    # scale=(1, 1) and ratio=(1, 1) on a square image: the crop is the whole image, resized to the crop size.
    processor = Processor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    img = _image(40, 40, 5)
    resized = np.asarray(img.resize((16, 16), PILImage.BICUBIC), dtype=np.float32) / 255.0
    expected = torch.from_numpy(((resized - MEAN) / STD).transpose(2, 0, 1).copy())
    for flip_p, want in ((0.0, expected), (1.0, expected.flip(-1))):
        t = make_transform(processor, train=True, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=flip_p)
        got = t({"image": [img], "label": [0]})["pixel_values"][0]
        torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_random_resized_crop_params_stay_in_bounds():
    g = torch.Generator().manual_seed(0)
    width, height = 100, 80
    for _ in range(300):
        i, j, h, w = random_resized_crop_params(width, height, (0.08, 1.0), (3 / 4, 4 / 3), g)
        assert 0 <= i and i + h <= height and 0 <= j and j + w <= width
        # Rounding w and h to ints moves area and ratio slightly off their ranges.
        assert 0.08 * 0.9 <= (h * w) / (width * height) <= 1.0
        assert math.log(3 / 4) - 0.1 <= math.log(w / h) <= math.log(4 / 3) + 0.1
    # A very wide image never fits the ratio range: fallback is the centered crop with ratio clamped to 4/3.
    assert random_resized_crop_params(400, 10, (0.99, 1.0), (3 / 4, 4 / 3), g) == (0, 193, 10, 13)


def test_per_worker_generators_differ(monkeypatch):
    processor = Processor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    img = _image(50, 50, 6)
    t = make_transform(processor, train=True, generator=torch.Generator().manual_seed(3))
    outs = []
    for wid in (0, 1):
        info = types.SimpleNamespace(id=wid, seed=1000 + wid)
        monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda info=info: info)
        outs.append(t({"image": [img] * 3, "label": [0] * 3})["pixel_values"])
    assert not all(torch.equal(x, y) for x, y in zip(*outs))


def test_with_transform_dataloader_and_collate():
    processor = Processor(size={"shortest_edge": 16}, crop_size={"height": 16, "width": 16})
    ds = Dataset.from_dict(
        {"image": [_image(20, 24, i) for i in range(5)], "label": [0, 1, 2, 1, 0], "classname": list("abcba")},
        Features({"image": Image(), "label": Value("int64"), "classname": Value("string")}),
    )
    one = ds.with_transform(make_transform(processor, train=False))[0]
    assert one["pixel_values"].shape == (3, 16, 16) and one["labels"] == 0
    loader = torch.utils.data.DataLoader(
        ds.with_transform(make_transform(processor, train=True, generator=torch.Generator().manual_seed(0))),
        batch_size=2,
        collate_fn=collate,
    )
    batches = list(loader)
    assert [b["pixel_values"].shape for b in batches] == [(2, 3, 16, 16), (2, 3, 16, 16), (1, 3, 16, 16)]
    assert torch.cat([b["labels"] for b in batches]).tolist() == [0, 1, 2, 1, 0]
    assert batches[0]["labels"].dtype == torch.long
