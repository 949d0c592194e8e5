"""The toy world's tasks as entries of the dataset registry, so every protocol and `examples/train.py` use them.

Names: `toy_<task>` renders the downstream default domain (`DEFAULT_DOMAIN`, "photo"); `toy_<task>_<domain>` renders
another domain (targets for domain generalisation); tasks are `objects` (shape x colour), `shapes` and `colors`
(targets for cross-task transfer). Images are rendered in memory on every load (seconds; no files, no cache).
"""

import functools

from . import DEFAULT_DOMAIN
from .splits import toy_splits
from .world import get_task, list_domains, list_tasks

# images per class and domain; the few-shot sampler then draws K per class from `train` (K <= 32)
TOY_SPLIT_SIZES = {"n_train_per_class": 32, "n_val_per_class": 4, "n_test_per_class": 20}
WORLD_SEED = 0


def toy_dataset_name(task: str, domain: str = DEFAULT_DOMAIN) -> str:
    return f"toy_{task}" if domain == DEFAULT_DOMAIN else f"toy_{task}_{domain}"


@functools.cache
def _rendered(task: str, domain: str):
    # rendering is a pure function of (task, domain, sizes, seed): render once per process (the methods table
    # runs dozens of trainings in one process); `datasets.Dataset`s are never modified in place downstream
    return toy_splits(task, domain, seed=WORLD_SEED, **TOY_SPLIT_SIZES)


def _builder(task: str, domain: str):
    def build(data_dir: str | None):  # data_dir is unused: the world is generated
        from ..data.specs import RawSplits

        splits = _rendered(task, domain)
        return RawSplits(
            train=splits["train"], val=splits["val"], test=splits["test"], classnames=list(get_task(task).classnames)
        )

    return build


def register_toy_datasets() -> list[str]:
    """Register every (task, domain) pair (idempotent). Returns the names."""
    # imported here: `peft_vlprompt.data` calls this function when it is imported (no import cycle either way)
    from ..data.specs import DATASET_SPECS, DatasetSpec, register_dataset

    names = []
    for task in list_tasks():
        for domain in list_domains():
            name = toy_dataset_name(task, domain)
            names.append(name)
            if name not in DATASET_SPECS:
                spec = DatasetSpec(
                    name=name,
                    kind="generated",
                    template=get_task(task).template,
                    num_classes=len(get_task(task).classnames),
                    builder=_builder(task, domain),
                )
                register_dataset(spec)
    return names
