"""Data layer: dataset registry, CoOp-layout readers, few-shot sampling, base/new split, CLIP transforms.

>>> from peft_vlprompt.data import load_task, make_transform, collate
>>> task = load_task("dtd", "/data", shots=16, seed=1, subsample="base")  # doctest: +SKIP
>>> train = task.train.with_transform(make_transform(processor, train=True))  # doctest: +SKIP
"""

from .coop_layout import LayoutSplits, items_to_dataset, read_layout
from .fewshot import base_new_relabel, few_shot_indices, sample_per_label, seed_everything
from .hf_datasets import hf_builder, raw_splits_from_hf, register_hf_dataset
from .loading import TaskData, load_task
from .specs import (
    DATASET_SPECS,
    EUROSAT_CLASSNAMES,
    DatasetSpec,
    RawSplits,
    get_dataset_spec,
    register_dataset,
    unregister_dataset,
)
from .split_builders import build_split
from .split_io import atomic_write_json, read_split_file
from .templates import IMAGENET_TEMPLATES, IMAGENET_TEMPLATES_60, IMAGENET_TEMPLATES_SELECT, TEMPLATES
from .transforms import CLIPTransform, ImageSettings, collate, make_transform

__all__ = [
    "DATASET_SPECS",
    "EUROSAT_CLASSNAMES",
    "IMAGENET_TEMPLATES",
    "IMAGENET_TEMPLATES_60",
    "IMAGENET_TEMPLATES_SELECT",
    "TEMPLATES",
    "CLIPTransform",
    "DatasetSpec",
    "ImageSettings",
    "LayoutSplits",
    "RawSplits",
    "TaskData",
    "atomic_write_json",
    "base_new_relabel",
    "build_split",
    "collate",
    "few_shot_indices",
    "get_dataset_spec",
    "hf_builder",
    "items_to_dataset",
    "load_task",
    "make_transform",
    "raw_splits_from_hf",
    "read_layout",
    "read_split_file",
    "register_dataset",
    "register_hf_dataset",
    "sample_per_label",
    "seed_everything",
    "unregister_dataset",
]

# The embedded toy world registers its datasets (toy_objects, toy_shapes_sketch, ...) so they are always available.
from ..toy.registry import register_toy_datasets as _register_toy_datasets  # noqa: E402

_register_toy_datasets()
