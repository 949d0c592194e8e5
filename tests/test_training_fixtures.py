"""Shared helpers of the training tests (no tests here): a tiny CLIP saved to disk and tiny datasets.

`tiny_model_dir` is a tiny random CLIP + `CLIPImageProcessor` (32 px) saved with `save_pretrained`;
`TINY_DATASET` is a generated dataset registered in memory (4 classes, 6 train / 2 val / 3 test images each);
`make_imagefolder` writes the same kind of images as an imagefolder tree (for subprocess runs).
"""

from pathlib import Path

import numpy as np
from datasets import Dataset, Features, Value
from datasets import Image as HFImage
from PIL import Image
from transformers import CLIPImageProcessor

from peft_vlprompt.data import DATASET_SPECS, DatasetSpec, RawSplits, register_dataset
from tests.tiny import tiny_clip

TINY_DATASET = "tiny_training_shapes"
CLASSNAMES = ["bird", "cat", "dog", "fish"]  # sorted, as an imagefolder orders them
COUNTS = {"train": 6, "val": 2, "test": 3}
SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def tiny_image(label: int, index: int, split: str) -> Image.Image:
    """A 32 px image whose dominant colour channel depends on the class (so training has signal)."""
    rng = np.random.default_rng([label, index, SPLIT_IDS[split]])
    arr = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
    arr[..., label % 3] += 120
    return Image.fromarray(arr)


def _split(split: str) -> Dataset:
    rows = {"image": [], "label": []}
    for label in range(len(CLASSNAMES)):
        for index in range(COUNTS[split]):
            rows["image"].append(tiny_image(label, index, split))
            rows["label"].append(label)
    return Dataset.from_dict(rows, features=Features({"image": HFImage(), "label": Value("int64")}))


def _builder(data_dir):
    return RawSplits(train=_split("train"), val=_split("val"), test=_split("test"), classnames=list(CLASSNAMES))


def register_tiny_dataset() -> str:
    if TINY_DATASET not in DATASET_SPECS:
        register_dataset(DatasetSpec(name=TINY_DATASET, kind="generated", builder=_builder))
    return TINY_DATASET


def save_tiny_model(folder: Path) -> Path:
    tiny_clip().save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def make_imagefolder(root: Path) -> Path:
    """`root/{train,val,test}/<class>/<i>.png` with the images of `TINY_DATASET`."""
    for split, n in COUNTS.items():
        for label, name in enumerate(CLASSNAMES):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for index in range(n):
                tiny_image(label, index, split).save(folder / f"{index}.png")
    return root


def base_args(model_dir: Path, output_dir: Path, method: str, *extra: str) -> list[str]:
    """A 2-epoch base-to-new run on the tiny dataset: 2 base classes x 4 shots, batch 2 -> 4 steps per epoch."""
    return [
        "--method", method, "--dataset", register_tiny_dataset(), "--model", str(model_dir),
        "--output_dir", str(output_dir), "--protocol", "base2new", "--shots", "4", "--seed", "1",
        "--num_epochs", "2", "--batch_size", "2", "--eval_batch_size", "16", *extra,
    ]  # fmt: skip
