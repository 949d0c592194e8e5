"""Train/val/test splits of the toy world as in-memory `datasets.Dataset`s."""

import logging
from collections.abc import Sequence

import numpy as np

from .world import DOMAINS, SPLITS, get_task, render

logger = logging.getLogger(__name__)

SPLIT_IDS = {"train": 0, "val": 1, "test": 2}


def image_seed(seed: int, task: str, domain: str, split: str, label: int, index: int) -> list[int]:
    """The seed tuple of one toy image; every image of `toy_splits` is `render(..., default_rng(image_seed(...)))`."""
    return [seed, get_task(task).task_id, DOMAINS.index(domain), SPLIT_IDS[split], label, index]


def toy_example(task: str, domain: str, split: str, label: int, index: int, seed: int = 0, difficulty: float = 1.0):
    """One image of `task`/`label`: a pure function of its arguments. Returns a `PIL.Image`."""
    spec = get_task(task)
    rng = np.random.default_rng(image_seed(seed, task, domain, split, label, index))
    members = spec.members[label]
    class_id = members[int(rng.integers(len(members)))] if len(members) > 1 else members[0]
    return render(class_id, domain, rng, difficulty)


def toy_splits(
    task: str = "objects",
    domains: str | Sequence[str] = "photo",
    n_train_per_class: int = 16,
    n_val_per_class: int = 4,
    n_test_per_class: int = 20,
    seed: int = 0,
    difficulty: float = 1.0,
):
    """Build the train/val/test splits of a toy task, rendered in memory (no files, no cache).

    Each split holds `n_*_per_class` images per class *per domain*, ordered by (domain, index, label), so labels
    first appear in label order. Splits never share an image: the split is part of every image's seed.

    Args:
        task (`str`): one of `list_tasks()`.
        domains (`str` or sequence of `str`): visual domain(s), see `list_domains()`.
        n_train_per_class, n_val_per_class, n_test_per_class (`int`): images per class and domain (0 allowed).
        seed (`int`): world seed; the same arguments always give identical pixels.
        difficulty (`float`): clutter/noise/jitter scale, see `render`.

    Returns:
        `datasets.DatasetDict` with splits `train`, `val`, `test` and columns `image` (`datasets.Image`, PIL on
        access), `label` (`ClassLabel` whose `.names` are the class names), `classname` and `domain`.
    """
    from datasets import ClassLabel, Dataset, DatasetDict, Features, Value
    from datasets import Image as ImageFeature

    spec = get_task(task)
    domains = [domains] if isinstance(domains, str) else list(domains)
    if not domains:
        raise ValueError("`domains` must name at least one domain, got []")
    for d in domains:
        if d not in DOMAINS:
            raise ValueError(f"`domains` must be taken from {list(DOMAINS)}, got {d!r}")
    sizes = {"train": n_train_per_class, "val": n_val_per_class, "test": n_test_per_class}
    for split, n in sizes.items():
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"`n_{split}_per_class` must be an int >= 0, got {n!r}")
    features = Features(
        {
            "image": ImageFeature(),
            "label": ClassLabel(names=list(spec.classnames)),
            "classname": Value("string"),
            "domain": Value("string"),
        }
    )
    out = {}
    for split in SPLITS:
        rows = {"image": [], "label": [], "classname": [], "domain": []}
        for domain in domains:
            for index in range(sizes[split]):
                for label, name in enumerate(spec.classnames):
                    rows["image"].append(toy_example(task, domain, split, label, index, seed, difficulty))
                    rows["label"].append(label)
                    rows["classname"].append(name)
                    rows["domain"].append(domain)
        out[split] = Dataset.from_dict(rows, features=features)
    logger.debug("built toy splits %s/%s: %s", task, domains, {k: len(v) for k, v in out.items()})
    return DatasetDict(out)
