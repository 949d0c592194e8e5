"""Resumable checkpoints that hold the adapter only, and the atomic final save.

`accelerator.save_state` would write the whole CLIP (frozen weights included) as `model.safetensors`; the pre-hooks
registered by `register_adapter_only_hooks` replace it by `get_peft_model_state_dict` and load it back with
`set_peft_model_state_dict`. Each checkpoint also gets `vlprompt_state.json` (method, peft type, adapter config,
step), read before anything is built so that resuming another method's checkpoint fails at once with a clear error.
"""

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file

logger = logging.getLogger(__name__)

STATE_FILE = "vlprompt_state.json"
WEIGHTS_FILE = "model.safetensors"  # accelerate's name for the first model's weights
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to a temp file in the same folder, then `os.replace` it onto `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


class TrainingState:
    """Loop position saved with every checkpoint (`accelerator.register_for_checkpointing`).

    Loading a state of another method raises, as a second line of defence behind `check_checkpoint`.
    """

    def __init__(self, method: str, peft_type: str | None) -> None:
        self.method, self.peft_type = method, peft_type
        self.global_step = 0

    def state_dict(self) -> dict[str, Any]:
        return {"method": self.method, "peft_type": self.peft_type, "global_step": self.global_step}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        _check_same_method(state, self.method, self.peft_type, "the checkpoint")
        self.global_step = int(state["global_step"])


def _check_same_method(state: dict, method: str, peft_type: str | None, where: str) -> None:
    if state.get("method") != method or state.get("peft_type") != peft_type:
        raise ValueError(
            f"{where} was written by method {state.get('method')!r} (peft type {state.get('peft_type')!r}) but this "
            f"run trains {method!r} (peft type {peft_type!r}); resume with the same --method and adapter config, or "
            "start a fresh --output_dir"
        )


def register_adapter_only_hooks(accelerator, peft_model, training_state: TrainingState, adapter_config: dict):
    """Make `save_state`/`load_state` store only the adapter of `peft_model` (the first prepared model)."""

    def save_hook(models, weights, output_dir):
        if weights:
            weights[0] = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(peft_model).items()}
        if accelerator.is_main_process:
            state = training_state.state_dict() | {"adapter_config": adapter_config}
            atomic_write_json(Path(output_dir) / STATE_FILE, state)

    def load_hook(models, input_dir):
        path = Path(input_dir) / WEIGHTS_FILE
        if not path.is_file():
            raise ValueError(f"checkpoint {input_dir} has no {WEIGHTS_FILE}")
        result = set_peft_model_state_dict(peft_model, load_file(str(path)))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise ValueError(f"checkpoint {input_dir} holds tensors this adapter does not have: {unexpected[:5]}")
        if models:
            models.pop(0)  # loaded here; accelerate must not load the adapter-only file into the full model

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def checkpoint_number(path: str | os.PathLike) -> int:
    match = re.search(r"(\d+)$", Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (checkpoint_<n>)")
    return int(match.group(1))


def resolve_checkpoint(value: str, output_dir: str) -> Path:
    """The folder to resume from: `value` itself, or the newest `<output_dir>/checkpoints/checkpoint_<n>`."""
    if value != "latest":
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(f"`resume_from_checkpoint` folder {path} does not exist")
        return path
    root = Path(output_dir) / CHECKPOINTS_DIR
    candidates = [p for p in root.glob("checkpoint_*") if p.is_dir() and re.search(r"\d+$", p.name)]
    if not candidates:
        raise ValueError(f"`resume_from_checkpoint`='latest' but {root} holds no checkpoint")
    return max(candidates, key=checkpoint_number)


def check_checkpoint(path: Path, method: str, peft_type: str | None) -> dict:
    """Read `vlprompt_state.json` of a checkpoint and refuse another method's checkpoint (before any work)."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path} is not a peft_vlprompt training checkpoint: {STATE_FILE} is missing")
    try:
        state = json.loads(state_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{state_file} is corrupt: {e}") from e
    _check_same_method(state, method, peft_type, f"checkpoint {path}")
    return state


def save_adapter_atomically(peft_model, output_dir: str | os.PathLike, is_main_process: bool = True) -> Path:
    """`save_pretrained` into a temp folder, then rename it to `<output_dir>/adapter` (replacing an older one)."""
    target = Path(output_dir) / ADAPTER_DIR
    if not is_main_process:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".adapter-"))
    try:
        peft_model.save_pretrained(str(tmp))
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=".adapter-old-"))
            os.replace(target, old / ADAPTER_DIR)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
