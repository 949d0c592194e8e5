"""Fabricate mini dataset trees (tiny 8x8 images) in CoOp's layout, and other data-test helpers."""

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image


def write_image(path: str | os.PathLike, seed: int = 0, size: tuple[int, int] = (8, 8)) -> Path:
    """A small random RGB image; the format follows the extension (.png, .jpg)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def write_json(path: str | os.PathLike, obj) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))
    return path


def make_class_folders(image_dir: Path, counts: dict[str, int], ext: str = ".jpg") -> dict[str, list[str]]:
    """`image_dir/<class>/<i>.jpg` for each class; returns the relative paths per class."""
    out = {}
    for c, (cls, n) in enumerate(counts.items()):
        out[cls] = [str(write_image(image_dir / cls / f"img_{i:03d}{ext}", seed=100 * c + i).relative_to(image_dir))
                    for i in range(n)]  # fmt: skip
    return out


def make_dtd(root: Path, counts: dict[str, int] | None = None, with_split: bool = True) -> dict:
    """`root/dtd/images/<class>/...` and, with `with_split`, a split file taking 2 val, 2 test, the rest train per
    class. Returns the split dict (relative paths, labels in sorted class order)."""
    counts = counts or {"banded": 8, "blotchy": 6, "braided": 7}
    files = make_class_folders(root / "dtd" / "images", counts)
    split = {"train": [], "val": [], "test": []}
    for label, cls in enumerate(sorted(counts)):
        paths = files[cls]
        split["val"] += [[p, label, cls] for p in paths[:2]]
        split["test"] += [[p, label, cls] for p in paths[2:4]]
        split["train"] += [[p, label, cls] for p in paths[4:]]
    if with_split:
        write_json(root / "dtd" / "split_zhou_DescribableTextures.json", split)
    return split


def make_eurosat(root: Path, counts: dict[str, int] | None = None) -> Path:
    """`root/eurosat/2750/<CamelCase class>/...` without a split file."""
    counts = counts or {"AnnualCrop": 10, "Forest": 10, "SeaLake": 10}
    make_class_folders(root / "eurosat" / "2750", counts)
    return root / "eurosat"


def make_oxford_pets(root: Path, breeds: dict[str, int] | None = None, n_trainval: int = 5, n_test: int = 2) -> Path:
    """`root/oxford_pets/images/<Breed>_<i>.jpg` + `annotations/{trainval,test}.txt` ("<name> <label> <sp> <id>")."""
    breeds = breeds or {"Abyssinian": 1, "american_bulldog": 2, "Bengal": 1}  # breed -> species
    base = root / "oxford_pets"
    lines = {"trainval.txt": [], "test.txt": []}
    for label, (breed, species) in enumerate(breeds.items(), start=1):
        for i in range(n_trainval + n_test):
            name = f"{breed}_{i + 1}"
            write_image(base / "images" / f"{name}.jpg", seed=10 * label + i)
            lines["trainval.txt" if i < n_trainval else "test.txt"].append(f"{name} {label} {species} {label}")
    for name, rows in lines.items():
        (base / "annotations").mkdir(parents=True, exist_ok=True)
        (base / "annotations" / name).write_text("\n".join(rows) + "\n")
    return base


def make_imagenet(root: Path, wnids: dict[str, str] | None = None, n_train: int = 5, n_val: int = 2) -> Path:
    """`root/imagenet/images/{train,val}/<wnid>/...` + `classnames.txt` ("<wnid> <name>", listed unsorted)."""
    wnids = wnids or {"n02085620": "Chihuahua", "n01440764": "tench", "n01443537": "goldfish"}
    base = root / "imagenet"
    for c, wnid in enumerate(wnids):
        for split, n in (("train", n_train), ("val", n_val)):
            for i in range(n):
                write_image(base / "images" / split / wnid / f"{wnid}_{i}.JPEG", seed=50 * c + i)
    (base / "classnames.txt").write_text("".join(f"{w} {name}\n" for w, name in wnids.items()))
    return base


def make_imagefolder(root: Path, classes=("cat", "dog"), counts=None) -> Path:
    """`root/{train,test[,validation]}/<class>/...` for `load_dataset("imagefolder")`."""
    counts = counts or {"train": 4, "test": 2}
    for split, n in counts.items():
        make_class_folders(root / split, {c: n for c in classes}, ext=".png")
    return root
