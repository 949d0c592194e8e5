"""The toy world's tasks are ordinary entries of the dataset registry (every protocol runs on them unchanged)."""

import math

import numpy as np

from peft_vlprompt.data import DATASET_SPECS, get_dataset_spec, load_task
from peft_vlprompt.toy import get_task, list_domains, list_tasks
from peft_vlprompt.toy.registry import TOY_SPLIT_SIZES, register_toy_datasets, toy_dataset_name


def test_every_task_and_domain_is_registered_once():
    names = register_toy_datasets()  # idempotent: already registered by importing peft_vlprompt.data
    assert len(names) == len(set(names)) == len(list_tasks()) * len(list_domains())
    assert {"toy_objects", "toy_shapes", "toy_colors", "toy_objects_sketch"} <= set(DATASET_SPECS)
    spec = get_dataset_spec("toy_objects")
    assert spec.kind == "generated" and spec.template == get_task("objects").template


def test_base_to_new_on_the_toy_world():
    classnames = list(get_task("objects").classnames)
    n_base = math.ceil(len(classnames) / 2)
    base = load_task("toy_objects", None, shots=4, seed=1, subsample="base")
    new = load_task("toy_objects", None, shots=4, seed=1, subsample="new")
    assert base.classnames == classnames[:n_base] and new.classnames == classnames[n_base:]
    assert len(base.train) == 4 * n_base and len(base.val) == min(4, 4) * n_base
    assert len(base.test) == TOY_SPLIT_SIZES["n_test_per_class"] * n_base
    assert sorted(set(new.test["label"])) == list(range(len(classnames) - n_base))
    assert all(new.classnames[label] == name for label, name in zip(new.test["label"], new.test["classname"]))


def test_loading_twice_gives_identical_pixels_and_samples():
    first = load_task("toy_shapes_sketch", None, shots=2, seed=3, subsample="all")
    second = load_task("toy_shapes_sketch", None, shots=2, seed=3, subsample="all")
    assert first.train["label"] == second.train["label"]
    for a, b in zip(first.train.select(range(4)), second.train.select(range(4))):
        assert np.array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
    assert toy_dataset_name("shapes", "sketch") == "toy_shapes_sketch" and toy_dataset_name("objects") == "toy_objects"
