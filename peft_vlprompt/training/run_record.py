"""What a run was, recorded in every checkpoint (`vlprompt_state.json` -> `run_args`) and compared on resume.

Resuming with another seed, shots, learning rate or adapter would silently make a run that is neither the old one nor
the new one, labelled as the new one. So a resume must repeat the arguments that shape the result; only those that
say how far to go, where to write, or how to report may change.
"""

import json
import logging
from pathlib import Path

from .._validation import RunRefused
from .args import TrainArguments, cli_fields
from .checkpoint import STATE_FILE, TrainingState

logger = logging.getLogger(__name__)

# May differ between a run and its resume: stopping point, checkpointing, output, reporting, local resources
RESUME_MAY_DIFFER = frozenset({
    "config", "resume_from_checkpoint", "output_dir", "max_train_steps", "checkpointing_steps",
    "checkpoints_total_limit", "logging_steps", "with_tracking", "report_to", "push_to_hub", "hub_model_id",
    "hub_private", "eval_batch_size", "eval_zero_shot", "dataloader_num_workers", "torch_threads", "class_chunk_size",
    "text_memory_budget_mb", "verify_images", "tracker_project_name", "gradient_checkpointing", "torch_compile",
    "data_dir", "cpu",
})  # fmt: skip


def run_signature(args: TrainArguments) -> dict:
    """The arguments that shape a run's result (after the preset filled num_epochs / lr / batch_size)."""
    return {f.name: getattr(args, f.name) for f in cli_fields() if f.name not in RESUME_MAY_DIFFER}


class RunState(TrainingState):
    """`TrainingState` that also records the run's arguments in every checkpoint."""

    def __init__(self, method: str, peft_type: str | None, run_args: dict) -> None:
        super().__init__(method, peft_type)
        self.run_args = run_args

    def state_dict(self) -> dict:
        return super().state_dict() | {"run_args": self.run_args}


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(f"{prefix}{key}: {a!r} in the checkpoint, {b!r} now")
    return out


def check_resume_args(checkpoint: Path, args: TrainArguments) -> None:
    """Refuse to resume `checkpoint` with other result-shaping arguments, naming each differing one."""
    state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    recorded = state.get("run_args")
    if recorded is None:
        logger.warning("checkpoint %s records no run arguments (written by an older version): the resumed run's "
                       "arguments cannot be checked against it", checkpoint)  # fmt: skip
        return
    now = json.loads(json.dumps(run_signature(args), default=str))  # the JSON round trip the record went through
    diffs = _differences(recorded, now)
    if diffs:
        raise RunRefused(
            f"cannot resume {checkpoint} with other arguments than the run that wrote it: "
            f"{'; '.join(diffs)}. Resume with the checkpoint's values, or start a fresh --output_dir"
        )


def resolved_adapter_config(config, backbone) -> dict:
    """`config` as injection into `backbone` leaves it (`validate_for_backbone`: token ids resolved for the family,
    e.g. a SigLIP config's `token_ids_from` "clip" -> "siglip"), which is what a checkpoint records, so a resumed run
    compares like with like. Configs of other libraries (peft's `LoraConfig`) are not resolved."""
    if hasattr(config, "validate_for_backbone"):
        config.validate_for_backbone(backbone)
    return config.to_dict()


def check_resume_adapter(checkpoint: Path, adapter_config: dict) -> None:
    """Refuse to resume `checkpoint` into another adapter config (e.g. another `n_ctx`), naming each field."""
    state = json.loads((Path(checkpoint) / STATE_FILE).read_text())
    recorded = state.get("adapter_config")
    if recorded is None:
        return
    ignore = {"base_model_name_or_path", "revision", "inference_mode", "peft_version", "target_modules", "task_type"}
    old = {k: v for k, v in recorded.items() if k not in ignore}
    new = {k: v for k, v in json.loads(json.dumps(adapter_config, default=str)).items() if k not in ignore}
    diffs = _differences(old, new, prefix="adapter ")
    if diffs:
        raise RunRefused(f"cannot resume {checkpoint} into another adapter: {'; '.join(diffs)}. Resume with the "
                         "checkpoint's adapter settings, or start a fresh --output_dir")  # fmt: skip
