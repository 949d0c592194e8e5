"""Deterministic, resumable batch order for the DPL search.

Each pass over a dataset is a fresh permutation drawn from `(seed, stream, pass)` alone, so the order of any batch is
a pure function of its position: a resumed search needs only the position, not a sampler or RNG state, and the
validation stream is a proper cycling iterator that re-shuffles on every pass (the released code re-creates its
validation iterator at every step and so only ever sees the first validation batch).
"""

from collections.abc import Callable, Sequence

import numpy as np
import torch

TRAIN_STREAM, VAL_STREAM = 0, 1


def pass_batches(
    num_items: int,
    batch_size: int,
    *,
    seed: int,
    stream: int,
    pass_index: int,
    drop_last: bool,
    rank: int = 0,
    world_size: int = 1,
) -> list[list[int]]:
    """Index batches of one pass: a permutation seeded by `(seed, stream, pass_index)`, cut into global batches of
    `batch_size * world_size`, of which this rank takes its `batch_size` slice.

    With several processes the permutation is padded by wrapping around (like `DistributedSampler`) so every rank
    gets the same number of equally sized batches.
    """
    if num_items < 1:
        raise ValueError(f"cannot draw batches from an empty dataset (`num_items`={num_items})")
    rng = np.random.default_rng([seed, stream, pass_index])
    order = rng.permutation(num_items).tolist()
    global_batch = batch_size * world_size
    if drop_last and num_items >= global_batch:
        order = order[: num_items - num_items % global_batch]
    elif len(order) % global_batch:
        pad = global_batch - len(order) % global_batch if world_size > 1 else 0
        order = order + (order * (pad // len(order) + 1))[:pad]
    batches = []
    for start in range(0, len(order), global_batch):
        chunk = order[start : start + global_batch]
        per_rank = -(-len(chunk) // world_size)
        batches.append(chunk[rank * per_rank : (rank + 1) * per_rank])
    return batches


class CyclingBatches:
    """Endless batches of a dataset, re-shuffled on every pass; `position` (pass, batch) is all the state."""

    def __init__(
        self,
        dataset: Sequence,
        batch_size: int,
        collate_fn: Callable[[list], dict[str, torch.Tensor]],
        *,
        seed: int,
        stream: int = VAL_STREAM,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.stream, self.rank, self.world_size = seed, stream, rank, world_size
        self.pass_index, self.batch_index = 0, 0
        self._batches: list[list[int]] | None = None

    def _current_pass(self) -> list[list[int]]:
        if self._batches is None:
            self._batches = pass_batches(
                len(self.dataset),
                self.batch_size,
                seed=self.seed,
                stream=self.stream,
                pass_index=self.pass_index,
                drop_last=False,
                rank=self.rank,
                world_size=self.world_size,
            )
        return self._batches

    def __next__(self) -> dict[str, torch.Tensor]:
        batches = self._current_pass()
        if self.batch_index >= len(batches):
            self.pass_index, self.batch_index, self._batches = self.pass_index + 1, 0, None
            batches = self._current_pass()
        indices = batches[self.batch_index]
        self.batch_index += 1
        return self.collate_fn([self.dataset[i] for i in indices])

    def __iter__(self):
        return self

    def state_dict(self) -> dict[str, int]:
        return {"pass_index": self.pass_index, "batch_index": self.batch_index}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.pass_index, self.batch_index, self._batches = int(state["pass_index"]), int(state["batch_index"]), None
