"""The DPL search's data: DataLoaders over the training loop's `EpochSampler`, prepared by accelerate.

Each pass over a dataset is the permutation `EpochSampler` draws from `(seed, pass)` alone, and a training item may be
addressed by `(view, index)` (`peft_vlprompt.training.data.AugmentedViews`: the random crop and flip of image `index`
seeded by `(seed, view, index)`), so any batch is a pure function of its position. Resuming therefore needs only
the position: `skip_first_batches` skips the batches already used, and a DataLoader reading ahead (accelerate's
does) draws nothing from a global RNG. The validation stream cycles through passes, re-shuffled on every one (the
released code re-creates its validation iterator at every step and so only ever sees the first validation batch).
"""

from collections.abc import Callable, Sequence

from accelerate import skip_first_batches
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from ..training.data import EpochSampler, view_seed

TRAIN_STREAM, VAL_STREAM = 0, 1


def stream_seed(seed: int, stream: int) -> int:
    """The sampler seed of one stream (training or validation) of a search seeded with `seed`."""
    return view_seed(seed, stream, 0xD91)


class ByIndex(TorchDataset):
    """`dataset[(view, index)]` -> `dataset[index]`: a plain dataset under a sampler that yields keys."""

    def __init__(self, dataset: Sequence) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        return self.dataset[int(key[1])]


def search_loader(
    dataset: Sequence,
    batch_size: int,
    collate_fn: Callable,
    *,
    seed: int,
    stream: int,
    keyed: bool,
    drop_last: bool,
    accelerator=None,
) -> tuple[DataLoader, EpochSampler]:
    """A DataLoader over `EpochSampler` keys (`keyed`: the dataset takes `(view, index)`, else only the index),
    prepared by `accelerator` (each process takes every N-th batch of the same order)."""
    if len(dataset) < 1:
        raise ValueError("cannot draw batches from an empty dataset")
    sampler = EpochSampler(len(dataset), stream_seed(seed, stream))
    world = accelerator.num_processes if accelerator is not None else 1
    loader = DataLoader(
        dataset if keyed else ByIndex(dataset),
        sampler=sampler,
        batch_size=batch_size,
        collate_fn=collate_fn,
        drop_last=drop_last and len(dataset) >= batch_size * world,
    )
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    return loader, sampler


def epoch_batches(loader: DataLoader, sampler: EpochSampler, epoch: int, skip: int = 0):
    """The loader over pass `epoch`, without its first `skip` batches (already used before a resume)."""
    sampler.set_epoch(epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    return skip_first_batches(loader, skip) if skip else loader


def end(loader) -> None:
    """Unregister a prepared loader left before its end from accelerate's GradientState (`end()` is idempotent)."""
    if hasattr(loader, "end"):
        loader.end()


class CyclingLoader:
    """Endless batches of a (prepared) DataLoader, pass after pass; `(pass_index, batch_index)` is all the state."""

    def __init__(self, loader: DataLoader, sampler: EpochSampler) -> None:
        self.loader, self.sampler = loader, sampler
        self.pass_index, self.batch_index = 0, 0
        self._current, self._iterator = None, None

    def __next__(self):
        if self._iterator is None:
            self._current = epoch_batches(self.loader, self.sampler, self.pass_index, self.batch_index)
            self._iterator = iter(self._current)
        try:
            batch = next(self._iterator)
        except StopIteration:
            if self.batch_index == 0:
                raise ValueError("the validation loader yields no batch") from None
            self.pass_index, self.batch_index, self._iterator = self.pass_index + 1, 0, None
            return next(self)
        self.batch_index += 1
        return batch

    def __iter__(self):
        return self

    def close(self) -> None:
        if self._current is not None:
            end(self._current)
        self._current, self._iterator = None, None

    def state_dict(self) -> dict[str, int]:
        return {"pass_index": self.pass_index, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.close()
        self.pass_index, self.batch_index = int(state["pass_index"]), int(state["batch_index"])


def pass_order(num_items: int, seed: int, stream: int, pass_index: int) -> list[int]:
    """The item order of one pass of a stream (what the loaders iterate; for tests and inspection)."""
    sampler = EpochSampler(num_items, stream_seed(seed, stream))
    sampler.set_epoch(pass_index)
    return [int(index) for _, index in sampler]
