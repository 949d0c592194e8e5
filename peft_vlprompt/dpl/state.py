"""The DPL search's checkpoint pieces: its position as a `TrainingState`, `latest`, and the refused older format.

The checkpoints themselves are the training loop's (`peft_vlprompt.training.checkpoint.CheckpointManager`).
"""

import os
from dataclasses import asdict
from pathlib import Path

from ..training.checkpoint import TrainingState, resolve_checkpoint

# arguments a resumed search may change (how long it runs, how often it checkpoints and logs); any other is refused
RESUMABLE_CHANGES = {"num_epochs", "max_steps", "checkpointing_steps", "checkpoint_every", "checkpoints_total_limit",
                     "log_every"}  # fmt: skip
METHOD = "dpl_search"  # recorded in each checkpoint: a training run's checkpoint is refused, and vice versa
LEGACY_PREFIX, LEGACY_STATE_FILE = "checkpoint-", "search_state.pt"  # the older, pickled format (refused)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint under `<output_dir>/checkpoints`, or None."""
    try:
        return resolve_checkpoint("latest", str(output_dir))
    except ValueError:
        return None


def legacy_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """`checkpoint-<step>` folders of the older, pickled format under `output_dir` (never loaded)."""
    root = Path(output_dir)
    return (
        sorted(p for p in root.glob(f"{LEGACY_PREFIX}*") if (p / LEGACY_STATE_FILE).is_file()) if root.is_dir() else []
    )


def refuse_legacy_resume(value: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Raise, naming the folder, if resuming from `value` (a folder or "latest") would mean the older format."""
    if str(value) != "latest":
        if (Path(value) / LEGACY_STATE_FILE).is_file():
            refuse_legacy(Path(value))
    elif latest_checkpoint(output_dir) is None and legacy_checkpoints(output_dir):
        refuse_legacy(legacy_checkpoints(output_dir)[-1])


def refuse_legacy(path: Path) -> None:
    raise ValueError(
        f"{path} is a DPL search checkpoint of the older format ({LEGACY_STATE_FILE} and rng_<rank>.pt, written with "
        "torch.save), which is not loaded: nothing pickled is read back. Start the search afresh into another "
        "--output_dir (or delete the old checkpoint folders); new checkpoints go to <output_dir>/checkpoints/"
    )


class SearchState(TrainingState):
    """The search's position, saved as JSON in every checkpoint: epoch, batch, validation stream, loss history."""

    def __init__(self, search, peft_type: str) -> None:  # search: the `DPLSearch`
        super().__init__(METHOD, peft_type)
        self.search = search

    def state_dict(self) -> dict:
        s = self.search
        self.global_step = s.global_step
        return super().state_dict() | {
            "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch, "val_batches": s.val_batches.state_dict(),
            "world_size": s.world_size, "search_args": asdict(s.args), "run_info": s.run_info, "history": s.history,
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        s = self.search
        s.global_step, s.epoch, s.batch_in_epoch = self.global_step, int(state["epoch"]), int(state["batch_in_epoch"])
        s.val_batches.load_state_dict(state["val_batches"])
        s.history = list(state["history"])


class OneProcess:
    """What `CheckpointManager` asks of an `Accelerator`, for a search run without one."""

    is_main_process, process_index, num_processes, scaler, step = True, 0, 1, None, 0

    def wait_for_everyone(self) -> None:
        return None
