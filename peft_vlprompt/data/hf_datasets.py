"""Any `datasets` source as `RawSplits`: an imagefolder directory, a Hub id, or an in-memory `Dataset`/`DatasetDict`.

Class names come from the label column's `ClassLabel` (imagefolder: sorted folder names); `classnames=[...]` imposes
another order, through `Dataset.align_labels_with_mapping` run on the label column alone (run on the full dataset it
would decode and re-encode every image).
"""

import os
from collections.abc import Callable, Sequence

from datasets import ClassLabel, Dataset, DatasetDict, Image, load_dataset

from .coop_layout import column_list
from .specs import DatasetSpec, RawSplits, register_dataset

VAL_SPLIT_NAMES = ("validation", "val", "valid", "dev")


def _load(source: str, **load_kwargs) -> DatasetDict:
    if os.path.isdir(source):
        return load_dataset("imagefolder", data_dir=source, **load_kwargs)
    return load_dataset(source, **load_kwargs)  # a Hub id: needs the network or a warm cache


def _labels_in_order(ds: Dataset, label_column: str, classnames: list[str]) -> Dataset:
    """Relabels a `ClassLabel` column so that label i is `classnames[i]` (names matched case-insensitively)."""
    feature = ds.features[label_column]
    have, want = sorted(n.lower() for n in feature.names), sorted(n.lower() for n in classnames)
    if have != want:
        raise ValueError(
            f"`classnames` must name the same classes as the dataset's `{label_column}` ClassLabel; "
            f"dataset has {feature.names}, got {list(classnames)}."
        )
    aligned = ds.select_columns([label_column]).align_labels_with_mapping(
        {n: i for i, n in enumerate(classnames)}, label_column
    )
    new = ClassLabel(names=list(classnames))
    return ds.remove_columns(label_column).add_column(label_column, column_list(aligned, label_column), feature=new)


def raw_splits_from_hf(
    source: "str | Dataset | DatasetDict",
    *,
    image_column: str = "image",
    label_column: str = "label",
    classnames: Sequence[str] | None = None,
    train_split: str | None = "train",
    val_split: str | None = None,
    test_split: str = "test",
    **load_kwargs,
) -> RawSplits:
    """Wraps a `datasets` source as `RawSplits`.

    Args:
        source: an imagefolder directory (`train/`, optional `val/`|`validation/`, `test/`, each with one folder per
            class), a Hub id (`load_dataset(source, **load_kwargs)`), a `DatasetDict`, or a single `Dataset` (used as
            the test split only, e.g. for zero-shot evaluation).
        image_column / label_column: column names; images may be an `Image()` feature or file paths.
        classnames: optional class order; needs a `ClassLabel` column with the same names. Required when the label
            column is a plain integer column.
        train_split / val_split / test_split: split names; `val_split=None` picks the first of
            `VAL_SPLIT_NAMES` present, if any.
    """
    if isinstance(source, str):
        dd = _load(source, **load_kwargs)
    elif isinstance(source, DatasetDict):
        dd = source
    elif isinstance(source, Dataset):
        dd = DatasetDict({"test": source})
        train_split, test_split = None, "test"
    else:
        raise TypeError(f"`source` must be a path, a Hub id, a Dataset or a DatasetDict, got {type(source).__name__}.")
    if test_split not in dd:
        raise ValueError(f"`test_split` {test_split!r} not found; available splits: {sorted(dd)}.")
    if val_split is None:
        val_split = next((n for n in VAL_SPLIT_NAMES if n in dd), None)
    for arg, name in (("train_split", train_split), ("val_split", val_split)):
        if name is not None and name not in dd:
            raise ValueError(f"`{arg}` {name!r} not found; available splits: {sorted(dd)}.")

    splits = {}
    for key, name in (("train", train_split), ("val", val_split), ("test", test_split)):
        if name is None:
            splits[key] = None
            continue
        ds = dd[name]
        for arg, col in (("image_column", image_column), ("label_column", label_column)):
            if col not in ds.column_names:
                raise ValueError(f"`{arg}` {col!r} not in split {name!r}; columns: {ds.column_names}.")
        if not isinstance(ds.features[image_column], Image):
            ds = ds.cast_column(image_column, Image())
        splits[key] = ds

    feature = splits["test"].features[label_column]
    if classnames is not None:
        classnames = [str(c) for c in classnames]
        if isinstance(feature, ClassLabel):
            splits = {k: v if v is None else _labels_in_order(v, label_column, classnames) for k, v in splits.items()}
    elif isinstance(feature, ClassLabel):
        classnames = list(feature.names)
    else:
        raise ValueError(f"Label column {label_column!r} is not a ClassLabel; pass `classnames` to name its labels.")
    return RawSplits(
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        classnames=classnames,
        image_column=image_column,
        label_column=label_column,
    )


def hf_builder(source: "str | Dataset | DatasetDict", **kwargs) -> Callable[[str | None], RawSplits]:
    """A `DatasetSpec.builder` for a `datasets` source (same arguments as `raw_splits_from_hf`)."""

    def build(data_dir: str | None) -> RawSplits:
        return raw_splits_from_hf(source, **kwargs)

    return build


def register_hf_dataset(
    name: str, source: "str | Dataset | DatasetDict", *, template: str = "a photo of a {}.", **kwargs
) -> DatasetSpec:
    """Registers a `datasets` source under `name`, so `load_task(name, None, ...)` can use it."""
    return register_dataset(
        DatasetSpec(name=name, kind="generated", template=template, builder=hf_builder(source, **kwargs))
    )
