"""Rebuilding a missing CoOp split file from a dataset's original files, with CoOp's rules.

- No official split (Caltech101, DTD, EuroSAT, Food101; Flowers from its label file): per class, shuffle and take
  round(50%) train, round(20%) val, the rest test.
- An official trainval/test split (OxfordPets, SUN397, UCF101, StanfordCars): per class, shuffle trainval and take
  round(20%) as val, the rest as train.

Each builder takes the spec, the dataset folder and a seeded `random.Random` (never the global one), and returns
`{"train", "val", "test"}` lists of `(relpath, label, classname)`. File listings are sorted before shuffling so a
rebuild is the same on every machine. `required_files` lets the caller fail before any work when a source is missing.
"""

import json
import random
import re
from collections.abc import Callable
from pathlib import Path

from .specs import DatasetSpec
from .split_io import Item, list_visible

SPLIT_SEED = 1  # fixed seed for rebuilt splits; independent of the run seed


def _check_counts(name: str, n: int, parts: tuple[int, ...], rule: str) -> None:
    if min(parts) <= 0:
        raise ValueError(f"Cannot split class {name!r} ({n} images) {rule}: every part needs at least one image.")


def _split_50_20_30(items: list, rng: random.Random, name: str) -> tuple[list, list, list]:
    items = list(items)
    rng.shuffle(items)
    n = len(items)
    n_train, n_val = round(n * 0.5), round(n * 0.2)
    _check_counts(name, n, (n_train, n_val, n - n_train - n_val), "50/20/30 into train/val/test")
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def split_trainval(trainval: list[Item], rng: random.Random, p_val: float = 0.2) -> tuple[list[Item], list[Item]]:
    """Per label (in order of first appearance), shuffle and move round(p_val * n) items to val."""
    groups: dict[int, list[int]] = {}
    for i, (_, label, _) in enumerate(trainval):
        groups.setdefault(label, []).append(i)
    train, val = [], []
    for idxs in groups.values():
        n_val = round(len(idxs) * p_val)
        _check_counts(trainval[idxs[0]][2], len(idxs), (n_val, len(idxs) - n_val), "80/20 into train/val")
        rng.shuffle(idxs)
        val += [trainval[i] for i in idxs[:n_val]]
        train += [trainval[i] for i in idxs[n_val:]]
    return train, val


def _lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


def _class_folders(spec: DatasetSpec, dataset_dir: Path, rng: random.Random) -> dict[str, list[Item]]:
    image_dir = dataset_dir / spec.image_dir
    categories = [c for c in list_visible(image_dir, dirs=True) if c not in spec.ignored_classes]
    out = {"train": [], "val": [], "test": []}
    for label, category in enumerate(categories):
        images = [f"{category}/{im}" for im in list_visible(image_dir / category, dirs=False)]
        classname = spec.classname_fixes.get(category, category)
        for split, part in zip(("train", "val", "test"), _split_50_20_30(images, rng, category)):
            out[split] += [(p, label, classname) for p in part]
    return out


def _oxford_pets(spec: DatasetSpec, dataset_dir: Path, rng: random.Random) -> dict[str, list[Item]]:
    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / "annotations" / name):
            imname, label = line.split()[:2]
            breed = "_".join(imname.split("_")[:-1]).lower()
            items.append((f"{imname}.jpg", int(label) - 1, breed))
        return items

    train, val = split_trainval(read("trainval.txt"), rng)
    return {"train": train, "val": val, "test": read("test.txt")}


def _sun397(spec: DatasetSpec, dataset_dir: Path, rng: random.Random) -> dict[str, list[Item]]:
    # ClassName.txt lines look like "/a/abbey"; image lists like "/a/abbey/sun_x.jpg".
    cname2lab = {line[1:]: i for i, line in enumerate(_lines(dataset_dir / "ClassName.txt"))}

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(dataset_dir / name):
            relpath = line[1:]
            folder = relpath.rsplit("/", 1)[0]
            # Drop the leading letter folder and put qualifiers like "indoor" first: "a/apse/indoor" -> "indoor apse".
            classname = " ".join(folder.split("/")[1:][::-1])
            items.append((relpath, cname2lab[folder], classname))
        return items

    train, val = split_trainval(read("Training_01.txt"), rng)
    return {"train": train, "val": val, "test": read("Testing_01.txt")}


def _ucf101(spec: DatasetSpec, dataset_dir: Path, rng: random.Random) -> dict[str, list[Item]]:
    lists = dataset_dir / "ucfTrainTestlist"
    cname2lab = {}
    for line in _lines(lists / "classInd.txt"):
        index, action = line.split()
        cname2lab[action] = int(index) - 1

    def read(name: str) -> list[Item]:
        items = []
        for line in _lines(lists / name):
            action, filename = line.split()[0].split("/")
            # The mid-frame folders are named with the CamelCase split on capitals: "ApplyEyeMakeup" -> "Apply_Eye_Makeup".
            renamed = "_".join(re.findall("[A-Z][^A-Z]*", action))
            items.append((f"{renamed}/{filename.replace('.avi', '.jpg')}", cname2lab[action], renamed))
        return items

    train, val = split_trainval(read("trainlist01.txt"), rng)
    return {"train": train, "val": val, "test": read("testlist01.txt")}


def _loadmat(path: Path, spec: DatasetSpec):
    try:
        from scipy.io import loadmat
    except ImportError as e:
        raise ImportError(
            f"Rebuilding the '{spec.name}' split reads {path.name}, which needs scipy (`pip install scipy`); "
            f"or place {spec.split_file} in {path.parent}."
        ) from e
    return loadmat(path)


def _oxford_flowers(spec: DatasetSpec, dataset_dir: Path, rng: random.Random) -> dict[str, list[Item]]:
    labels = _loadmat(dataset_dir / "imagelabels.mat", spec)["labels"][0]
    names_file = dataset_dir / "cat_to_name.json"
    try:
        lab2cname = json.loads(names_file.read_text())
    except ValueError as e:  # a bare JSONDecodeError would not say which file
        raise ValueError(f"{names_file} is not valid JSON: {e}.") from e
    groups: dict[int, list[str]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(f"image_{i + 1:05d}.jpg")
    out = {"train": [], "val": [], "test": []}
    for label, paths in groups.items():
        cname = lab2cname[str(label)]
        for split, part in zip(("train", "val", "test"), _split_50_20_30(paths, rng, cname)):
            out[split] += [(p, label - 1, cname) for p in part]
    return out


def _stanford_cars(spec: DatasetSpec, dataset_dir: Path, rng: random.Random) -> dict[str, list[Item]]:
    meta = _loadmat(dataset_dir / "devkit" / "cars_meta.mat", spec)["class_names"][0]

    def read(folder: str, anno: Path) -> list[Item]:
        items = []
        for a in _loadmat(anno, spec)["annotations"][0]:
            label = int(a["class"][0, 0]) - 1
            words = str(meta[label][0]).split(" ")
            classname = " ".join([words[-1]] + words[:-1])  # year first: "2012 Tesla Model S"
            items.append((f"{folder}/{a['fname'][0]}", label, classname))
        return items

    train, val = split_trainval(read("cars_train", dataset_dir / "devkit" / "cars_train_annos.mat"), rng)
    return {"train": train, "val": val, "test": read("cars_test", dataset_dir / "cars_test_annos_withlabels.mat")}


SPLIT_BUILDER_FNS: dict[str, Callable[[DatasetSpec, Path, random.Random], dict[str, list[Item]]]] = {
    "class_folders": _class_folders,
    "oxford_pets": _oxford_pets,
    "sun397": _sun397,
    "ucf101": _ucf101,
    "oxford_flowers": _oxford_flowers,
    "stanford_cars": _stanford_cars,
}


def required_files(spec: DatasetSpec, dataset_dir: Path) -> list[Path]:
    """The source files/folders a rebuild of `spec`'s split needs."""
    return {
        "class_folders": [dataset_dir / spec.image_dir],
        "oxford_pets": [dataset_dir / "annotations" / "trainval.txt", dataset_dir / "annotations" / "test.txt"],
        "sun397": [dataset_dir / n for n in ("ClassName.txt", "Training_01.txt", "Testing_01.txt")],
        "ucf101": [
            dataset_dir / "ucfTrainTestlist" / n for n in ("classInd.txt", "trainlist01.txt", "testlist01.txt")
        ],
        "oxford_flowers": [dataset_dir / "imagelabels.mat", dataset_dir / "cat_to_name.json"],
        "stanford_cars": [
            dataset_dir / "devkit" / "cars_meta.mat",
            dataset_dir / "devkit" / "cars_train_annos.mat",
            dataset_dir / "cars_test_annos_withlabels.mat",
        ],
    }[spec.split_builder]


def build_split(spec: DatasetSpec, dataset_dir: Path, seed: int = SPLIT_SEED) -> dict[str, list[Item]]:
    """Builds `spec`'s train/val/test split from its original files with a private RNG seeded with `seed`."""
    return SPLIT_BUILDER_FNS[spec.split_builder](spec, dataset_dir, random.Random(seed))
