"""Few-shot sampling and base/new, checked against an independent re-statement of CoOp/Dassl's algorithm."""

import json
import logging
import random
import re

import numpy as np
import pytest
import torch
from datasets import Image

from peft_vlprompt.data import base_new_relabel, few_shot_indices, load_task
from tests.data_fixtures import make_dtd, write_json


def reference_fewshot(train_items, val_items, k, seed):
    """Dassl's generate_fewshot_dataset restated: seed, group by label (first appearance), random.sample per label
    (all if fewer); train with k, then val with min(k, 4)."""
    random.seed(seed)

    def sample(items, n):
        groups = {}
        for item in items:
            groups.setdefault(item[1], []).append(item)
        out = []
        for label in groups:
            out.extend(random.sample(groups[label], n) if len(groups[label]) >= n else groups[label])
        return out

    train = sample(train_items, k)
    val = sample(val_items, min(k, 4))
    return train, val


def _items(labels, tag):
    return [(f"{tag}_{i}.jpg", y, f"class{y}") for i, y in enumerate(labels)]


@pytest.mark.parametrize("k,seed", [(1, 1), (3, 2), (4, 3), (16, 1)])
def test_few_shot_indices_match_reference(k, seed):
    # Labels in a scrambled order; class 3 has only 2 train items (fewer than most k).
    train_labels = [2, 0, 2, 1, 0, 2, 1, 1, 0, 2, 2, 3, 0, 1, 3, 0, 2, 1, 0, 0]
    val_labels = [1, 1, 0, 2, 0, 3, 2, 1, 0, 0, 2, 3, 3, 3, 3, 1]
    train_items, val_items = _items(train_labels, "t"), _items(val_labels, "v")
    ref_train, ref_val = reference_fewshot(train_items, val_items, k, seed)
    train_idx, val_idx = few_shot_indices(train_labels, val_labels, k, seed)
    assert [train_items[i] for i in train_idx] == ref_train
    assert [val_items[i] for i in val_idx] == ref_val


def test_few_shot_seeds_numpy_and_torch():
    few_shot_indices([0, 0, 1, 1], None, 1, seed=5)
    after = (np.random.rand(), torch.rand(1).item())
    np.random.seed(5)
    torch.manual_seed(5)
    assert after == (np.random.rand(), torch.rand(1).item())


def test_fewer_images_than_shots_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="peft_vlprompt.data.fewshot"):
        train_idx, _ = few_shot_indices([0, 0, 0, 1, 2, 2], None, 3, seed=1, classnames=["a", "b", "c"])
    assert sorted(train_idx) == [0, 1, 2, 3, 4, 5]  # every class has <= 3 items: all are kept
    msg = caplog.records[-1].getMessage()
    assert (
        msg
        == "train: 2 of 3 classes have fewer than 3 images; used all of them (label: count) 1 ('b'): 1, 2 ('c'): 2."
    )


def test_base_new_relabel_by_hand():
    # 5 classes present -> ceil(5/2) = 3 base classes.
    assert base_new_relabel([4, 0, 3, 1, 2, 0], "base") == {0: 0, 1: 1, 2: 2}
    assert base_new_relabel([4, 0, 3, 1, 2, 0], "new") == {3: 0, 4: 1}
    assert base_new_relabel([4, 0, 3, 1, 2, 0], "all") is None
    # Only the labels present in (few-shot) train count, sorted: 7, 2, 9, 5 -> base 2, 5; new 7, 9.
    assert base_new_relabel([7, 2, 9, 5], "base") == {2: 0, 5: 1}
    assert base_new_relabel([7, 2, 9, 5], "new") == {7: 0, 9: 1}
    with pytest.raises(ValueError, match=re.escape("`subsample` must be one of ('all', 'base', 'new'), got 'half'.")):
        base_new_relabel([0], "half")


def _five_class_dtd(root):
    return make_dtd(root, {"banded": 9, "blotchy": 7, "braided": 8, "bubbly": 6, "bumpy": 7})


def test_load_task_fewshot_and_base_new_exact(tmp_path):
    split = _five_class_dtd(tmp_path)
    task = load_task("dtd", tmp_path, shots=2, seed=3, subsample="all")
    ref_train, ref_val = reference_fewshot([tuple(e) for e in split["train"]], [tuple(e) for e in split["val"]], 2, 3)
    root = tmp_path / "dtd" / "images"
    got = [(p["path"], y, c) for p, y, c in zip(task.train.cast_column("image", Image(decode=False))["image"], task.train["label"], task.train["classname"])]  # fmt: skip
    assert got == [(str(root / p), y, c) for p, y, c in ref_train]
    assert list(zip(task.val["label"], task.val["classname"])) == [(y, c) for _, y, c in ref_val]
    assert task.classnames == ["banded", "blotchy", "braided", "bubbly", "bumpy"]
    assert len(task.test) == 10

    base = load_task("dtd", tmp_path, shots=2, seed=3, subsample="base")
    assert base.classnames == ["banded", "blotchy", "braided"]
    assert list(zip(base.train["label"], base.train["classname"])) == [(y, c) for _, y, c in ref_train if y < 3]
    assert base.test["label"] == [y for _, y, _ in split["test"] if y < 3]

    new = load_task("dtd", tmp_path, shots=2, seed=3, subsample="new")
    assert new.classnames == ["bubbly", "bumpy"]
    assert list(zip(new.train["label"], new.train["classname"])) == [(y - 3, c) for _, y, c in ref_train if y >= 3]
    assert list(zip(new.test["label"], new.test["classname"])) == [(y - 3, c) for _, y, c in split["test"] if y >= 3]
    assert list(zip(new.val["label"], new.val["classname"])) == [(y - 3, c) for _, y, c in ref_val if y >= 3]


def test_fewshot_cache_written_and_reused(tmp_path):
    split = _five_class_dtd(tmp_path)
    task = load_task("dtd", tmp_path, shots=2, seed=1, subsample="all")
    cache = tmp_path / "dtd" / "split_fewshot" / "shot_2-seed_1.json"
    saved = json.loads(cache.read_text())
    assert set(saved) == {"train", "val"}
    assert [tuple(e[1:]) for e in saved["train"]] == list(zip(task.train["label"], task.train["classname"]))
    assert all(e in split["train"] for e in saved["train"]) and all(e in split["val"] for e in saved["val"])
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]

    # A cache file is used as is (CoOp's behaviour): hand-write one and read it back.
    write_json(cache, {"train": split["train"][:3], "val": split["val"][:1]})
    again = load_task("dtd", tmp_path, shots=2, seed=1, subsample="all")
    assert again.train["label"] == [e[1] for e in split["train"][:3]] and len(again.val) == 1

    write_json(cache, {"train": [["x.jpg", 0, "wrong name"]], "val": []})
    with pytest.raises(
        ValueError, match=re.escape(f"Few-shot cache {cache}: 'train' entry 0 (0, 'wrong name') disagrees")
    ):
        load_task("dtd", tmp_path, shots=2, seed=1)


def test_shots_all_and_invalid(tmp_path):
    split = make_dtd(tmp_path)
    for shots in (None, -1):
        task = load_task("dtd", tmp_path, shots=shots, seed=1)
        assert len(task.train) == len(split["train"]) and len(task.val) == len(split["val"])
    assert not (tmp_path / "dtd" / "split_fewshot").exists()
    for shots in (0, -2, 1.5, True):
        with pytest.raises(
            ValueError, match=re.escape(f"`shots` must be >= 1, or -1/None for all images, got {shots!r}.")
        ):
            load_task("dtd", tmp_path, shots=shots, seed=1)
