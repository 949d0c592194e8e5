"""Few-shot sampling and the base/new class split, exactly as CoOp/Dassl do them.

Sampling (Dassl `generate_fewshot_dataset`, repeat=False): seed Python's `random`, NumPy and torch with the run seed;
group the train items by label in order of first appearance; per label take `random.sample(items, K)` (all items
when fewer); then the same for val with `min(K, 4)`. Train first, then val, nothing else drawing from `random` in
between. Everything here works on label lists and returns row indices: `random.sample` picks positions, so sampling
indices selects exactly the items CoOp selects.

Base/new (CoOp `subsample_classes`): after sampling, sort the train labels; base = first ceil(n/2), new = the rest,
each relabelled 0..m-1.
"""

import logging
import math
import random
from collections.abc import Sequence

import numpy as np
import torch

logger = logging.getLogger(__name__)

SUBSAMPLES = ("all", "base", "new")


def seed_everything(seed: int) -> None:
    """Seeds Python's `random`, NumPy and torch, as Dassl's `set_random_seed` does at the start of a run."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def normalize_shots(shots: int | None) -> int | None:
    """`None` or -1 -> None (use all); an int >= 1 is returned as is."""
    if shots is None or (isinstance(shots, int) and not isinstance(shots, bool) and shots == -1):
        return None
    if not isinstance(shots, int) or isinstance(shots, bool) or shots < 1:
        raise ValueError(f"`shots` must be >= 1, or -1/None for all images, got {shots!r}.")
    return shots


def group_by_label(labels: Sequence[int]) -> dict[int, list[int]]:
    """Row indices grouped by label, labels in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        groups.setdefault(int(label), []).append(i)
    return groups


def sample_per_label(labels: Sequence[int], shots: int, *, split: str = "train", classnames=None) -> list[int]:
    """Indices of `shots` random rows per label (all rows of a label that has fewer), drawn with the global `random`.

    Logs one warning listing the labels that had fewer than `shots` rows and how many were used."""
    out, short = [], []
    for label, idxs in group_by_label(labels).items():
        if len(idxs) >= shots:
            out += random.sample(idxs, shots)
        else:
            out += idxs
            short.append(label)
    if short:
        groups = group_by_label(labels)
        desc = ", ".join(
            f"{label}" + (f" ({classnames[label]!r})" if classnames else "") + f": {len(groups[label])}"
            for label in short[:10]
        )
        more = f" and {len(short) - 10} more" if len(short) > 10 else ""
        logger.warning(
            "%s: %d of %d classes have fewer than %d images; used all of them (label: count) %s%s.",
            split, len(short), len(groups), shots, desc, more,
        )  # fmt: skip
    return out


def few_shot_indices(
    train_labels: Sequence[int], val_labels: Sequence[int] | None, shots: int, seed: int, classnames=None
) -> tuple[list[int], list[int] | None]:
    """Seeds everything with `seed`, then samples `shots` per class from train and `min(shots, 4)` from val."""
    seed_everything(seed)
    train = sample_per_label(train_labels, shots, split="train", classnames=classnames)
    val = None
    if val_labels is not None:
        val = sample_per_label(val_labels, min(shots, 4), split="val", classnames=classnames)
    return train, val


def base_new_relabel(train_labels: Sequence[int], subsample: str) -> dict[int, int] | None:
    """{old label: new label} for the `subsample` half of the classes present in train; None for "all"."""
    if subsample not in SUBSAMPLES:
        raise ValueError(f"`subsample` must be one of {SUBSAMPLES}, got {subsample!r}.")
    if subsample == "all":
        return None
    labels = sorted({int(y) for y in train_labels})
    m = math.ceil(len(labels) / 2)
    selected = labels[:m] if subsample == "base" else labels[m:]
    return {old: new for new, old in enumerate(selected)}


def apply_relabel(labels: Sequence[int], relabel: dict[int, int] | None) -> tuple[list[int], list[int]]:
    """(kept row indices, their new labels), order preserved; rows whose label is not in `relabel` are dropped."""
    if relabel is None:
        return list(range(len(labels))), [int(y) for y in labels]
    kept = [i for i, y in enumerate(labels) if int(y) in relabel]
    return kept, [relabel[int(labels[i])] for i in kept]
