"""`datasets` inputs: an imagefolder directory and in-memory Dataset/DatasetDict, with explicit class order."""

import re

import datasets
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Value
from PIL import Image as PILImage

from peft_vlprompt.data import load_task, raw_splits_from_hf, register_hf_dataset, unregister_dataset
from tests.data_fixtures import make_imagefolder


@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    # Keep the imagefolder builder's arrow cache out of the user's HF cache.
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")


def test_imagefolder_directory(tmp_path, hf_cache):
    root = make_imagefolder(tmp_path / "imf", classes=("dog", "cat", "red_fox"), counts={"train": 3, "validation": 1, "test": 2})  # fmt: skip
    task = load_task("imagefolder", root, shots=2, seed=1)
    assert task.classnames == ["cat", "dog", "red_fox"]  # imagefolder sorts folder names
    assert task.template == "a photo of a {}."
    assert task.train.column_names == ["image", "label", "classname"]
    assert sorted(task.train["label"]) == [0, 0, 1, 1, 2, 2]
    assert len(task.val) == 3 and len(task.test) == 6
    assert all(task.classnames[y] == c for y, c in zip(task.test["label"], task.test["classname"]))
    assert task.test[0]["image"].size == (8, 8)
    new = load_task("imagefolder", root, shots=2, seed=1, subsample="new")
    assert new.classnames == ["red_fox"] and set(new.test["label"]) == {0}


def _memory_dd():
    names = ["zebra", "ant", "cow"]
    feats = Features({"picture": Image(), "target": ClassLabel(names=names)})
    imgs = [PILImage.new("RGB", (8, 8), (i * 30, 0, 0)) for i in range(6)]
    train = Dataset.from_dict({"picture": imgs, "target": [0, 1, 2, 0, 1, 2]}, feats)
    test = Dataset.from_dict({"picture": imgs[:3], "target": [2, 1, 0]}, feats)
    return DatasetDict({"train": train, "test": test})


def test_in_memory_datasetdict_with_explicit_class_order():
    dd = _memory_dd()
    raw = raw_splits_from_hf(dd, image_column="picture", label_column="target")
    assert raw.classnames == ["zebra", "ant", "cow"] and raw.val is None

    register_hf_dataset("mem", dd, image_column="picture", label_column="target", classnames=["Ant", "cow", "zebra"])
    try:
        task = load_task("mem", None, shots=None, seed=1)
    finally:
        unregister_dataset("mem")
    # Labels are re-indexed to the given order; each row keeps its class.
    assert task.classnames == ["Ant", "cow", "zebra"]
    assert task.train["label"] == [2, 0, 1, 2, 0, 1]
    assert task.train["classname"] == ["zebra", "Ant", "cow", "zebra", "Ant", "cow"]
    assert task.test["label"] == [1, 0, 2]
    assert task.train.column_names == ["image", "label", "classname"]
    assert task.train[1]["image"].getpixel((0, 0)) == (30, 0, 0)


def test_single_dataset_is_test_only_and_errors():
    test = _memory_dd()["test"]
    raw = raw_splits_from_hf(test, image_column="picture", label_column="target")
    assert raw.train is None and len(raw.test) == 3
    with pytest.raises(ValueError, match=re.escape("`classnames` must name the same classes as the dataset's `target` ClassLabel")):  # fmt: skip
        raw_splits_from_hf(test, image_column="picture", label_column="target", classnames=["a", "b", "c"])
    with pytest.raises(ValueError, match=re.escape("`image_column` 'image' not in split 'test'; columns: ['picture', 'target'].")):  # fmt: skip
        raw_splits_from_hf(test, label_column="target")
    plain = Dataset.from_dict({"image": [PILImage.new("RGB", (8, 8))], "label": [0]}, Features({"image": Image(), "label": Value("int64")}))  # fmt: skip
    with pytest.raises(ValueError, match=re.escape("Label column 'label' is not a ClassLabel (it is Value('int64')), so the dataset does not name its classes: pass `classnames` in label order (on the command line: --class_names_file")):  # fmt: skip
        raw_splits_from_hf(plain)
    assert raw_splits_from_hf(plain, classnames=["only"]).classnames == ["only"]
    with pytest.raises(ValueError, match=re.escape("`test_split` 'test' not found; available splits: ['train'].")):
        raw_splits_from_hf(DatasetDict({"train": plain}))
