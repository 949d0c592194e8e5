"""`load_task`: the one entry point the training loop calls (dataset name -> few-shot, base/new `TaskData`)."""

import io
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from datasets import Dataset, Image, Value

from .coop_layout import READERS, LayoutSplits, column_list, dataset_dir_for, items_to_dataset, read_layout
from .fewshot import SUBSAMPLES, apply_relabel, base_new_relabel, few_shot_indices, normalize_shots, seed_everything
from .hf_datasets import raw_splits_from_hf
from .specs import DatasetSpec, RawSplits, get_dataset_spec
from .split_io import Item, atomic_write_json, items_to_json, read_split_file
from .templates import resolve_template

logger = logging.getLogger(__name__)


@dataclass
class TaskData:
    """The splits of one task. Each split is a `datasets.Dataset` with columns `image` (decoded lazily), `label`
    (int, 0..len(classnames)-1) and `classname`. `val` is None where the protocol has none (ImageNet evaluates on
    its val folder, which is `test` here); `train` is None for test-only datasets (ImageNet-V2/-Sketch/-A/-R)."""

    name: str
    train: Dataset | None
    val: Dataset | None
    test: Dataset
    classnames: list[str]
    template: str
    shots: int | None = None
    seed: int = 1
    subsample: str = "all"

    @property
    def num_classes(self) -> int:
        return len(self.classnames)


class _ItemSplit:
    """A split held as CoOp items (relpath, label, classname) relative to `root`."""

    def __init__(self, items: list[Item], root: Path):
        self.items, self.root = items, root
        self.labels = [y for _, y, _ in items]

    def subset(self, indices: list[int]) -> "_ItemSplit":
        return _ItemSplit([self.items[i] for i in indices], self.root)

    def to_dataset(self, relabel: dict[int, int] | None) -> Dataset:
        kept, labels = apply_relabel(self.labels, relabel)
        return items_to_dataset([(self.items[i][0], y, self.items[i][2]) for i, y in zip(kept, labels)], self.root)


class _HFSplit:
    """A split held as a `datasets.Dataset` with arbitrary image/label column names."""

    def __init__(self, ds: Dataset, image_column: str, label_column: str, classnames: list[str]):
        self.ds, self.image_column, self.label_column, self.classnames = ds, image_column, label_column, classnames
        self.labels = column_list(ds, label_column)

    def subset(self, indices: list[int]) -> "_HFSplit":
        return _HFSplit(self.ds.select(indices), self.image_column, self.label_column, self.classnames)

    def to_dataset(self, relabel: dict[int, int] | None) -> Dataset:
        kept, labels = apply_relabel(self.labels, relabel)
        ds = self.ds.select_columns([self.image_column, self.label_column])
        if len(kept) != len(self.labels):
            ds = ds.select(kept)
        ds = ds.remove_columns(self.label_column)
        if self.image_column != "image":
            ds = ds.rename_column(self.image_column, "image")
        names = self.classnames if relabel is None else [self.classnames[old] for old in relabel]
        ds = ds.add_column("label", labels, feature=Value("int64"))
        return ds.add_column("classname", [names[y] for y in labels], feature=Value("string"))


def check_files_exist(splits: dict[str, "_ItemSplit | None"], dataset: str) -> None:
    """Every image the run will read must exist: checked up front (one `stat` per file), not mid-training."""
    missing, total = [], 0
    for split_name, split in splits.items():
        if not isinstance(split, _ItemSplit):
            continue
        total += len(split.items)
        missing += [(split_name, split.root / rel) for rel, _, _ in split.items if not (split.root / rel).is_file()]
    if missing:
        shown = "; ".join(f"{path} ('{split}')" for split, path in missing[:5])
        raise FileNotFoundError(
            f"Dataset '{dataset}': {len(missing)} of the {total} image files its splits reference are missing: "
            f"{shown}{' ...' if len(missing) > 5 else ''}. Check `data_dir` and that the dataset is fully extracted."
        )


def verify_images(splits: dict[str, Dataset | None], dataset: str) -> None:
    """Decode every image once (the optional `verify_images` check), naming the unreadable files or rows."""
    from PIL import Image as PILImage

    bad, total = [], 0
    for split_name, ds in splits.items():
        if ds is None or not isinstance(ds.features.get("image"), Image):
            continue  # arrays/tensors are decoded already
        paths = column_list(ds.cast_column("image", Image(decode=False)), "image")
        total += len(paths)
        for i, entry in enumerate(paths):
            where = entry.get("path") or f"'{split_name}' row {i}"
            try:
                if entry.get("bytes") is not None:
                    PILImage.open(io.BytesIO(entry["bytes"])).load()
                else:
                    with PILImage.open(entry["path"]) as im:
                        im.load()
            except Exception as e:  # PIL raises several types for truncated / non-image files
                bad.append(f"{where} ({type(e).__name__}: {e})")
    if bad:
        shown = "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
        raise ValueError(f"Dataset '{dataset}': {len(bad)} of {total} images cannot be decoded: {shown}")
    logger.info("Dataset '%s': all %d images decode.", dataset, total)


def _check_raw(raw: RawSplits, name: str) -> None:
    if not isinstance(raw, RawSplits):
        raise TypeError(f"The builder of dataset '{name}' must return RawSplits, got {type(raw).__name__}.")
    if not raw.classnames or not all(isinstance(c, str) for c in raw.classnames):
        raise ValueError(
            f"Dataset '{name}': `classnames` must be a non-empty list of strings, got {raw.classnames!r}."
        )
    if raw.test is None:
        raise ValueError(f"Dataset '{name}': the builder returned no test split.")
    n = len(raw.classnames)
    for split in ("train", "val", "test"):
        ds = getattr(raw, split)
        if ds is None:
            continue
        for col in (raw.image_column, raw.label_column):
            if col not in ds.column_names:
                raise ValueError(f"Dataset '{name}': column {col!r} missing from '{split}' (has {ds.column_names}).")
        labels = column_list(ds, raw.label_column)
        bad = [y for y in labels if not isinstance(y, int) or not 0 <= y < n]
        if bad:
            raise ValueError(f"Dataset '{name}': '{split}' labels must be ints in 0..{n - 1}, got {bad[:5]}.")
        if "classname" in ds.column_names:
            for i, (y, c) in enumerate(zip(labels, column_list(ds, "classname"))):
                if raw.classnames[y] != c:
                    raise ValueError(
                        f"Dataset '{name}': '{split}' row {i} has label {y} ({raw.classnames[y]!r}) but classname {c!r}."
                    )


def _fewshot_cache(layout: LayoutSplits, shots: int, seed: int) -> Path:
    return layout.dataset_dir / "split_fewshot" / f"shot_{shots}-seed_{seed}.json"


def _read_cache(path: Path, layout: LayoutSplits) -> dict[str, list[Item]]:
    names = ("train", "val") if layout.val is not None else ("train",)
    cached = read_split_file(path, splits=names, contiguous=False)
    for split, items in cached.items():
        for i, (_, y, c) in enumerate(items):
            if y >= len(layout.classnames) or layout.classnames[y] != c:
                raise ValueError(
                    f"Few-shot cache {path}: '{split}' entry {i} ({y}, {c!r}) disagrees with the dataset's split; "
                    "delete the cache file to resample."
                )
    return cached


def load_task(
    dataset: str,
    data_dir: str | os.PathLike | None,
    *,
    shots: int | None,
    seed: int,
    subsample: str = "all",
    template: str | None = None,
    verify: bool = False,
) -> TaskData:
    """Loads a registered dataset as a few-shot task.

    Args:
        dataset: registry name (`"dtd"`, `"imagenet"`, ...), or CoOp's name (`"DescribableTextures"`).
        data_dir: the folder holding the dataset folders (CoOp's `DATASET.ROOT`); for `"imagefolder"` the
            imagefolder tree itself; passed to the builder of generated datasets (may be None there).
        shots: images per class for train (val gets `min(shots, 4)`); None or -1 uses all.
        seed: run seed; Python's `random`, NumPy and torch are seeded with it before sampling.
        subsample: `"all"`, `"base"` (first half of the sorted classes) or `"new"` (second half).
        template: None for the dataset's CoOp template, a `TEMPLATES` table name, or a format string with one `{}`.
        verify: decode every image of the returned splits once, up front (slow on big datasets); that every
            referenced image file exists is always checked.

    Few-shot splits of CoOp-layout datasets are cached in `<dataset dir>/split_fewshot/shot_{K}-seed_{S}.json`.
    """
    spec: DatasetSpec = get_dataset_spec(dataset)
    shots = normalize_shots(shots)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"`seed` must be an int, got {seed!r}.")
    if subsample not in SUBSAMPLES:
        raise ValueError(f"`subsample` must be one of {SUBSAMPLES}, got {subsample!r}.")
    template = resolve_template(spec.name, template, spec.template)
    if spec.test_only and subsample != "all":
        raise ValueError(f"Dataset '{spec.name}' is test-only; `subsample` must be 'all', got {subsample!r}.")

    layout = None
    if spec.kind in READERS:
        layout = read_layout(spec, data_dir)
        classnames = layout.classnames
        train, val, test = (
            None if s is None else _ItemSplit(s, layout.root) for s in (layout.train, layout.val, layout.test)
        )
    else:
        if spec.kind == "imagefolder":
            raw = raw_splits_from_hf(str(dataset_dir_for(spec, data_dir)))
        else:
            raw = spec.builder(None if data_dir is None else str(data_dir))
        _check_raw(raw, spec.name)
        classnames = list(raw.classnames)
        train, val, test = (
            None if ds is None else _HFSplit(ds, raw.image_column, raw.label_column, classnames)
            for ds in (raw.train, raw.val, raw.test)
        )
    if train is None and subsample != "all":
        raise ValueError(f"Dataset '{spec.name}' has no train split; `subsample` must be 'all', got {subsample!r}.")

    seed_everything(seed)
    if shots is not None and train is not None:
        cache = _fewshot_cache(layout, shots, seed) if layout is not None else None
        if cache is not None and cache.exists():
            logger.info("Loading few-shot split from %s.", cache)
            cached = _read_cache(cache, layout)
            train, val = (
                _ItemSplit(cached["train"], layout.root),
                (_ItemSplit(cached["val"], layout.root) if "val" in cached else None),
            )
        else:
            train_idx, val_idx = few_shot_indices(
                train.labels, None if val is None else val.labels, shots, seed, classnames
            )
            train, val = train.subset(train_idx), (None if val is None else val.subset(val_idx))
            if cache is not None:
                out = {"train": train.items} | ({"val": val.items} if val is not None else {})
                try:
                    atomic_write_json(cache, items_to_json(out))
                    logger.info("Saved few-shot split to %s.", cache)
                except OSError as e:
                    logger.warning("Could not write the few-shot cache %s (%s); continuing without it.", cache, e)
    elif shots is not None:
        logger.info("Dataset '%s' has no train split; `shots`=%d is ignored.", spec.name, shots)

    check_files_exist({"train": train, "val": val, "test": test}, spec.name)
    relabel = base_new_relabel(train.labels, subsample) if train is not None else None
    if relabel is not None:
        classnames = [classnames[old] for old in relabel]  # relabel is ordered by new label
    out = {
        name: None if split is None else split.to_dataset(relabel)
        for name, split in (("train", train), ("val", val), ("test", test))
    }
    if verify:
        verify_images(out, spec.name)
    return TaskData(
        name=spec.name,
        train=out["train"],
        val=out["val"],
        test=out["test"],
        classnames=classnames,
        template=template,
        shots=shots,
        seed=seed,
        subsample=subsample,
    )
