"""Training data as a pure function of (seed, epoch, position): exact resume, and DDP equal to one process.

Every training example is addressed by a key `(view, index)`. `EpochSampler` yields the keys of one epoch in an
order drawn from `(seed, epoch)`; `AugmentedViews` renders view `view` of image `index` with the random crop and
flip seeded by `(seed, view, index)`. Nothing depends on how many batches were drawn before, so `skip_first_batches`
on resume reproduces the interrupted epoch exactly, DataLoader workers change nothing, and N ranks that each take
every N-th batch of the same order see, together, the batches one process sees. `CachedViews` serves frozen image
features of the same views (`--cache_image_features`), so the cached run sees the same augmentations.
"""

import logging

import numpy as np
import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Sampler

logger = logging.getLogger(__name__)


def view_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (NumPy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


class EpochSampler(Sampler):
    """Yields `(view, index)` for every index in a permutation drawn from `(seed, epoch)`.

    `view` is `epoch`, or `epoch % num_views` when a fixed number of views is cached. `set_epoch` is called by
    accelerate's DataLoaderShard (and by the loop).
    """

    def __init__(self, num_examples: int, seed: int, num_views: int | None = None, shuffle: bool = True) -> None:
        if num_examples < 1:
            raise ValueError(f"`num_examples` must be >= 1, got {num_examples}")
        if num_views is not None and num_views < 1:
            raise ValueError(f"`num_views` must be >= 1, got {num_views}")
        self.num_examples, self.seed, self.num_views, self.shuffle = num_examples, seed, num_views, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_examples

    def __iter__(self):
        view = self.epoch if self.num_views is None else self.epoch % self.num_views
        if self.shuffle:
            generator = torch.Generator().manual_seed(view_seed(self.seed, self.epoch, 0x5EED))
            order = torch.randperm(self.num_examples, generator=generator).tolist()
        else:
            order = range(self.num_examples)
        for index in order:
            yield (view, index)


class AugmentedViews(TorchDataset):
    """`dataset[(view, index)]` -> `{"pixel_values", "labels"}`: the train transform of image `index`, its random
    crop/flip drawn from `(seed, view, index)`.

    Args:
        dataset: a `datasets.Dataset` with `image` and `label` columns (no transform attached).
        transform: a `peft_vlprompt.data.CLIPTransform` built with `train=True` and no generator: it then draws from
            the global torch RNG, which is seeded per example here inside `torch.random.fork_rng` (the caller's RNG
            state is left untouched, in the main process and in workers alike).
        seed: the run seed.
    """

    def __init__(self, dataset, transform, seed: int) -> None:
        if getattr(transform, "generator", None) is not None:
            raise ValueError("`transform` must not hold a generator: the views are seeded per example")
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        view, index = key
        example = self.dataset[int(index)]
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: `torch.manual_seed` also queues lazy seeds for every accelerator backend,
            # which costs milliseconds per call
            torch.random.default_generator.manual_seed(view_seed(self.seed, view, index))
            pixels = self.transform.train_image(example["image"])
        return {"pixel_values": pixels, "labels": int(example["label"])}


class CachedViews(TorchDataset):
    """`dataset[(view, index)]` -> `{"image_features", "labels"}` from a `[num_views, N, D]` feature tensor."""

    def __init__(self, features: torch.Tensor, labels: list[int]) -> None:
        if features.dim() != 3 or features.shape[1] != len(labels):
            raise ValueError(f"`features` must be [num_views, {len(labels)}, dim], got shape {tuple(features.shape)}")
        self.features, self.labels = features, list(labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, key: tuple[int, int]) -> dict:
        view, index = key
        return {"image_features": self.features[view, index], "labels": self.labels[index]}


class KeyedViews(TorchDataset):
    """The `(view, index)` keys themselves with the rendered pixels (used to fill the feature cache)."""

    def __init__(self, views: AugmentedViews, num_views: int) -> None:
        self.views, self.num_views = views, num_views

    def __len__(self) -> int:
        return self.num_views * len(self.views)

    def __getitem__(self, position: int) -> dict:
        view, index = divmod(position, len(self.views))
        item = self.views[(view, index)]
        item["position"] = position
        return item


def collate_train(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stack examples holding `pixel_values` or `image_features` (+ `labels`, optional `position`)."""
    batch = {"labels": torch.tensor([e["labels"] for e in examples], dtype=torch.long)}
    for key in ("pixel_values", "image_features"):
        if key in examples[0]:
            batch[key] = torch.stack([e[key] for e in examples])
    if "position" in examples[0]:
        batch["position"] = torch.tensor([e["position"] for e in examples], dtype=torch.long)
    return batch
