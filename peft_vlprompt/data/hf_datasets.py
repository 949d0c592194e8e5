"""Any `datasets` source as `RawSplits`: an imagefolder directory, a Hub id, or an in-memory `Dataset`/`DatasetDict`.

Class names come from the label column's `ClassLabel` (imagefolder: sorted folder names); `classnames=[...]` imposes
another order, through `Dataset.align_labels_with_mapping` run on the label column alone (run on the full dataset it
would decode and re-encode every image).
"""

import logging
import os
from collections.abc import Callable, Sequence

from datasets import (
    ClassLabel,
    Dataset,
    DatasetDict,
    Image,
    IterableDataset,
    IterableDatasetDict,
    load_dataset,
    load_from_disk,
)

from .coop_layout import column_list
from .specs import DATASET_SPECS, DatasetSpec, RawSplits, register_dataset, unregister_dataset

logger = logging.getLogger(__name__)

VAL_SPLIT_NAMES = ("validation", "val", "valid", "dev")
_NO_STREAMING = ("few-shot sampling and the base/new class split read every label of a split before choosing "
                 "images, which a streamed (iterable) dataset cannot give")  # fmt: skip


def _saved_to_disk(folder: str) -> bool:
    return any(os.path.isfile(os.path.join(folder, f)) for f in ("dataset_dict.json", "state.json"))


def _load(source: str, **load_kwargs) -> DatasetDict:
    if load_kwargs.get("streaming"):
        raise ValueError(f"`streaming=True` cannot be honoured for {source!r}: {_NO_STREAMING}.")
    if os.path.isdir(source):
        if _saved_to_disk(source):  # `Dataset.save_to_disk` / `DatasetDict.save_to_disk` (Arrow files, no pickle)
            if load_kwargs:
                raise ValueError(f"{source} was saved with `save_to_disk`; loading arguments {sorted(load_kwargs)} "
                                 "do not apply to it")  # fmt: skip
            return load_from_disk(source)
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
    if isinstance(source, (IterableDataset, IterableDatasetDict)):
        raise TypeError(f"`source` is a streamed {type(source).__name__}: {_NO_STREAMING}; load it without streaming.")
    if isinstance(source, str):
        dd = _load(source, **load_kwargs)
        if isinstance(dd, Dataset):  # a single Dataset saved to disk: the test split only, as in memory
            dd = DatasetDict({"test": dd})
            train_split = None
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
        raise ValueError(f"Label column {label_column!r} is not a ClassLabel (it is {feature}), so the dataset does not "
                         "name its classes: pass `classnames` in label order (on the command line: --class_names_file "
                         "FILE, one name per line or a JSON list).")  # fmt: skip
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


# -- a dataset given on the command line (--dataset_name / --train_dir) ---------------------------------------------
_SOURCES: dict[str, tuple] = {}  # names registered by `register_source_dataset` -> what they were registered from


def load_source_splits(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
) -> DatasetDict:
    """The splits of a command-line source, with the evaluated split named "test" (as transformers'
    `run_image_classification_no_trainer.py` reads it: a Hub id / saved or imagefolder folder, or train and
    validation imagefolders). A dataset without a 'test' split is evaluated on its validation split (logged)."""
    if train_dir is not None:
        files = {"train": os.path.join(train_dir, "**")}
        if validation_dir is not None:
            files["validation"] = os.path.join(validation_dir, "**")
        dd, where = load_dataset("imagefolder", data_files=files), f"`train_dir` {train_dir}"
    elif dataset_name is not None:
        kwargs = {} if dataset_config_name is None else {"name": dataset_config_name}
        dd, where = _load(os.path.expanduser(dataset_name), **kwargs), f"`dataset_name` {dataset_name!r}"
        if isinstance(dd, Dataset):
            raise ValueError(f"{where} is a single Dataset saved with `save_to_disk`; save a DatasetDict with a "
                             "'train' and a 'test' (or 'validation') split")  # fmt: skip
    else:
        raise ValueError("give `dataset_name` or `train_dir`")
    if "test" in dd:
        return dd
    evaluated = next((n for n in VAL_SPLIT_NAMES if n in dd), None)
    if evaluated is None:
        raise ValueError(f"{where} has no 'test' or validation split (splits: {sorted(dd)}): the protocols evaluate "
                         "on held-out images; give --validation_dir, or a dataset with a 'test' or 'validation' "
                         "split")  # fmt: skip
    logger.info("%s has no 'test' split: evaluating on its %r split", where, evaluated)
    return DatasetDict({k: v for k, v in dd.items() if k == "train"} | {"test": dd[evaluated]})


def register_source_dataset(
    name: str,
    *,
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_dir: str | None = None,
    validation_dir: str | None = None,
    image_column: str = "image",
    label_column: str = "label",
    classnames: Sequence[str] | None = None,
) -> DatasetSpec:
    """Registers a command-line source under `name`, so `load_task(name, None, ...)` applies the protocols to it as to
    any registered dataset. Re-registering the same name from another source replaces it; a name registered
    otherwise (a built-in dataset) is refused."""
    key = (dataset_name, dataset_config_name, train_dir, validation_dir, image_column, label_column,
           None if classnames is None else tuple(classnames))  # fmt: skip
    if name in DATASET_SPECS:
        if _SOURCES.get(name) == key:
            return DATASET_SPECS[name]
        if name not in _SOURCES:
            raise ValueError(f"`dataset` {name!r} is a registered dataset, so it cannot name the data of "
                             f"--dataset_name/--train_dir: give another name with --dataset")  # fmt: skip
        unregister_dataset(name)

    def build(data_dir: str | None) -> RawSplits:
        dd = load_source_splits(dataset_name, dataset_config_name, train_dir, validation_dir)
        return raw_splits_from_hf(dd, image_column=image_column, label_column=label_column, classnames=classnames,
                                  train_split="train" if "train" in dd else None)  # fmt: skip

    spec = register_dataset(DatasetSpec(name=name, kind="generated", builder=build))
    _SOURCES[name] = key
    return spec
