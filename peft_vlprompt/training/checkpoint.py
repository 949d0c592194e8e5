"""Resumable checkpoints (adapter only, no pickle, complete-or-absent) and the atomic final adapter save.

A checkpoint `<output_dir>/checkpoints/checkpoint_<n>/` holds:

- `vlprompt_state.json`: method, peft type, adapter config, optimizer step (read before anything is built, so that
  resuming another method's checkpoint fails at once);
- `adapter_model.safetensors`: the adapter's tensors only (never the frozen CLIP);
- `optimizer.*`, `gpa.*`, `scaler.*`, `rng_state_<rank>.*`: JSON + safetensors pairs (`state_io`);
- `checkpoint_manifest.json`, written last: every file with its size and sha256.

It is written into the hidden `.checkpoint_<n>.partial/` and published by one rename, so a `checkpoint_<n>` folder
is complete; the manifest also catches a folder damaged later. `latest` is the newest checkpoint whose manifest
verifies. Older checkpoints beyond `--checkpoints_total_limit` are deleted only after the new one is published.
`accelerator.save_state`/`load_state` are not used: they pickle (custom objects, RNG, optimizer) and load with
`weights_only=False`.
"""

import hashlib
import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from .._atomic import (
    atomic_write_json,
    atomic_write_text,
    fsync_dir,
    fsync_file,
    make_temp_dir,
    normal_mode,
    temp_name,
    write_file,
)
from .state_io import decode_state, encode_state, rng_state, set_rng_state

logger = logging.getLogger(__name__)

__all__ = ["atomic_write_json", "atomic_write_text"]  # re-exported for the loop and other callers

STATE_FILE = "vlprompt_state.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MANIFEST_FILE = "checkpoint_manifest.json"
CHECKPOINTS_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
FORMAT_VERSION = 1
_NAME = re.compile(r"checkpoint_(\d+)")


class TrainingState:
    """Loop position saved with every checkpoint. Loading a state of another method raises."""

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


def checkpoint_number(path: str | os.PathLike) -> int:
    match = _NAME.fullmatch(Path(path).name)
    if match is None:
        raise ValueError(f"{path} is not a checkpoint folder (checkpoint_<n>)")
    return int(match.group(1))


def _named_checkpoints(root: Path) -> list[Path]:
    """`checkpoint_<n>` folders under `root`, newest first (complete or not)."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if _NAME.fullmatch(p.name) and p.is_dir()]
    return sorted(found, key=checkpoint_number, reverse=True)


def read_verified(path: Path) -> dict[str, bytes]:
    """Every file the manifest of checkpoint `path` lists, checked against its size and sha256."""
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ValueError(
            f"checkpoint {path} has no {MANIFEST_FILE}: it is incomplete (cut by a crash or a full disk) or was "
            "written by an older peft_vlprompt (pickled state, which is never loaded); resume from a complete "
            "checkpoint or start a fresh --output_dir"
        )
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT_VERSION or not isinstance(files, dict):
            raise ValueError(f"unknown format {manifest.get('format')!r}")
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{manifest_path} is corrupt: {e}") from e
    out = {}
    for name, meta in files.items():
        if "/" in name or name.startswith("."):
            raise ValueError(f"{manifest_path} lists an invalid file name {name!r}")
        try:
            data = (path / name).read_bytes()
        except OSError as e:
            raise ValueError(f"checkpoint {path} is incomplete: cannot read {name} ({e})") from e
        if len(data) != meta.get("bytes") or hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            raise ValueError(f"checkpoint {path}: {name} does not match its size/sha256 in {MANIFEST_FILE}")
        out[name] = data
    return out


def resolve_checkpoint(value: str, output_dir: str) -> Path:
    """The folder to resume from: `value` itself, or the newest complete `<output_dir>/checkpoints/checkpoint_<n>`."""
    if value != "latest":
        path = Path(value).expanduser()
        if not path.is_dir():
            raise ValueError(f"`resume_from_checkpoint` folder {path} does not exist")
        return path
    root = Path(output_dir) / CHECKPOINTS_DIR
    skipped = []
    for path in _named_checkpoints(root):
        try:
            read_verified(path)
            return path
        except ValueError as e:
            logger.warning("skipping %s for `resume_from_checkpoint`='latest': %s", path.name, e)
            skipped.append(path.name)
    raise ValueError(
        f"`resume_from_checkpoint`='latest' but {root} holds no complete checkpoint"
        + (f" (incomplete or damaged: {', '.join(skipped)})" if skipped else "")
        + "; run without `--resume_from_checkpoint` to start afresh"
    )


def check_checkpoint(path: Path, method: str, peft_type: str | None) -> dict:
    """Read `vlprompt_state.json` of a checkpoint, refuse another method's checkpoint, then verify the files."""
    state_file = path / STATE_FILE
    if not state_file.is_file():
        raise ValueError(f"{path} is not a peft_vlprompt training checkpoint: {STATE_FILE} is missing")
    try:
        state = json.loads(state_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:  # e.g. a pickle planted in its place
        raise ValueError(f"{state_file} is corrupt: {e}") from e
    if not isinstance(state, dict):
        raise ValueError(f"{state_file} is corrupt: a JSON object was expected, got {type(state).__name__}")
    _check_same_method(state, method, peft_type, f"checkpoint {path}")
    read_verified(path)
    return state


def check_output_dir(output_dir: str | os.PathLike, resuming: bool) -> None:
    """A fresh run must not mix its checkpoints with an earlier run's (checked before any work)."""
    root = Path(output_dir) / CHECKPOINTS_DIR
    found = [p.name for p in _named_checkpoints(root)]
    if found and not resuming:
        raise ValueError(
            f"`output_dir` {output_dir} already holds checkpoints of an earlier run ({', '.join(sorted(found))}); "
            f"pass `--resume_from_checkpoint latest` to continue it, or another `--output_dir` (or delete {root}) "
            "to start afresh"
        )


def clean_stale_temps(output_dir: str | os.PathLike) -> None:
    """Remove the hidden temp folders/files an interrupted run left (partial checkpoints, adapter saves)."""
    output_dir = Path(output_dir)
    stale = []
    if output_dir.is_dir():
        stale += [p for p in output_dir.iterdir() if p.name.startswith(".adapter-")]
        stale += [p for p in output_dir.iterdir() if re.fullmatch(r"\..+\.[0-9a-f]{12}\.tmp", p.name)]
    root = output_dir / CHECKPOINTS_DIR
    if root.is_dir():
        stale += [p for p in root.iterdir() if p.name.startswith(".checkpoint_")]
    for path in stale:
        logger.warning("removing %s, left by an interrupted run", path)
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


class CheckpointManager:
    """Saves and loads the loop's checkpoints (every process calls `save`/`load`; the main one writes shared files).

    Args:
        accelerator: the run's `Accelerator` (ranks, barriers, step counter, grad scaler).
        output_dir: the run's folder; checkpoints go to `<output_dir>/checkpoints/checkpoint_<n>`.
        peft_model: the model whose adapter is saved (`get_peft_model_state_dict`).
        optimizer: the prepared optimizer (ProGrad or not).
        state: the `TrainingState`; adapter_config: its config dict, recorded in `vlprompt_state.json`.
        gpa: the `GaussianPromptAggregator`, if any; total_limit: keep only this many checkpoints (None: all).
        extra: more objects with `state_dict`/`load_state_dict` (name -> object), saved as `<name>.*` (the DPL
            search's second optimizer); generators: `torch.Generator`s saved with each process's RNG states.
        adapter_name: the adapter whose tensors are saved.
    """

    def __init__(self, accelerator, output_dir, *, peft_model, optimizer, state: TrainingState, adapter_config: dict,
                 gpa=None, total_limit: int | None = None, extra: dict | None = None, generators=(),
                 adapter_name: str = "default") -> None:  # fmt: skip
        self.accelerator, self.root = accelerator, Path(output_dir) / CHECKPOINTS_DIR
        self.peft_model, self.optimizer, self.state, self.gpa = peft_model, optimizer, state, gpa
        self.adapter_config, self.total_limit = adapter_config, total_limit
        self.extra, self.generators, self.adapter_name = dict(extra or {}), list(generators), adapter_name
        named = _named_checkpoints(self.root)
        self.next_number = checkpoint_number(named[0]) + 1 if named else 0

    def _shared_files(self) -> dict[str, bytes]:
        acc = self.accelerator
        state = self.state.state_dict() | {"adapter_config": self.adapter_config, "accelerator_step": acc.step,
                                           "num_processes": acc.num_processes, "format": FORMAT_VERSION}  # fmt: skip
        weights = {k: v.detach().contiguous() for k, v in self._adapter_state().items()}
        _check_finite(weights, "the adapter to checkpoint")
        files = {STATE_FILE: (json.dumps(state, indent=2, sort_keys=True, default=str) + "\n").encode()}
        files[WEIGHTS_FILE] = save_tensors(weights)
        files |= encode_state("optimizer", self.optimizer.state_dict())
        if self.gpa is not None:
            files |= encode_state("gpa", self.gpa.state_dict())
        if acc.scaler is not None:
            files |= encode_state("scaler", acc.scaler.state_dict())
        for name, obj in self.extra.items():
            files |= encode_state(name, obj.state_dict())
        return files

    def _adapter_state(self) -> dict:
        return get_peft_model_state_dict(self.peft_model, adapter_name=self.adapter_name)

    def save(self) -> Path:
        """Write the next checkpoint, publish it by a rename, then rotate; returns its folder."""
        acc, main = self.accelerator, self.accelerator.is_main_process
        final = self.root / f"checkpoint_{self.next_number}"
        staging = self.root / f".{final.name}.partial"
        self.next_number += 1
        if main:
            self.root.mkdir(parents=True, exist_ok=True)
            if staging.exists():
                shutil.rmtree(staging)
            staging.mkdir()
        acc.wait_for_everyone()
        try:
            rng = rng_state() | {"generators": [g.get_state() for g in self.generators]}
            files = encode_state(f"rng_state_{acc.process_index}", rng)
            if main:
                files |= self._shared_files()
            for name, data in files.items():
                write_file(staging / name, data)
            acc.wait_for_everyone()
            if main:
                self._publish(staging, final)
        except BaseException:
            if main:
                shutil.rmtree(staging, ignore_errors=True)
            raise
        acc.wait_for_everyone()
        logger.info("saved checkpoint %s (optimizer step %d)", final, self.state.global_step)
        return final

    def _publish(self, staging: Path, final: Path) -> None:
        listing = {}
        for path in sorted(staging.iterdir()):
            data = path.read_bytes()
            listing[path.name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        manifest = {"format": FORMAT_VERSION, "files": listing}
        write_file(staging / MANIFEST_FILE, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
        fsync_dir(staging)
        os.rename(staging, final)  # `final` does not exist: numbers only grow
        fsync_dir(self.root)
        self._rotate(final)

    def _rotate(self, newest: Path) -> None:
        """Delete the oldest complete checkpoints beyond `total_limit`, never `newest` (which is complete)."""
        if self.total_limit is None or not self.accelerator.is_main_process:
            return
        newest = newest.resolve()
        others = [p for p in _named_checkpoints(self.root) if p.resolve() != newest and (p / MANIFEST_FILE).is_file()]
        keep = self.total_limit - 1 if newest.parent == self.root.resolve() else self.total_limit
        for old in reversed(others[max(keep, 0) :]):  # oldest first
            logger.info("deleting %s (`checkpoints_total_limit` %d)", old, self.total_limit)
            trash = temp_name(self.root, f".{old.name}.deleting-")
            os.rename(old, trash)  # gone from `latest` at once; a kill mid-delete leaves only a hidden folder
            shutil.rmtree(trash)
        fsync_dir(self.root)

    def load(self, path: Path) -> None:
        """Restore adapter, optimizer, GPA, scaler, this process's RNGs and the loop position from `path`."""
        acc = self.accelerator
        files = read_verified(path)
        try:
            meta = json.loads(files[STATE_FILE])
            weights = load_tensors(files[WEIGHTS_FILE])
        except (KeyError, ValueError, RuntimeError, SafetensorError) as e:
            raise ValueError(f"checkpoint {path}: {STATE_FILE}/{WEIGHTS_FILE} missing or corrupt ({e})") from e
        expected = self._adapter_state().keys()
        if weights.keys() != expected:
            missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
            raise ValueError(f"checkpoint {path} does not fit this adapter: missing {missing[:5]}, unexpected "
                             f"{unexpected[:5]}")  # fmt: skip
        _check_finite(weights, f"checkpoint {path}")
        set_peft_model_state_dict(self.peft_model, weights, adapter_name=self.adapter_name)
        self.optimizer.load_state_dict(decode_state("optimizer", files))
        for name, obj in self.extra.items():
            obj.load_state_dict(decode_state(name, files))
        if self.gpa is not None:
            self.gpa.load_state_dict(decode_state("gpa", files))
        if acc.scaler is not None and "scaler.json" in files:
            acc.scaler.load_state_dict(decode_state("scaler", files))
        rng_name = f"rng_state_{acc.process_index}"
        if f"{rng_name}.json" in files:
            rng = decode_state(rng_name, files)
            saved = rng.get("generators", [])
            if len(saved) != len(self.generators):
                raise ValueError(f"checkpoint {path} holds {len(saved)} extra generator state(s), this run has "
                                 f"{len(self.generators)}: pass the same `generators`")  # fmt: skip
            set_rng_state(rng)
            for generator, generator_state in zip(self.generators, saved):
                generator.set_state(generator_state.to(torch.uint8))
        else:
            logger.warning("checkpoint %s was written by %s processes: no RNG state for process %d", path,
                           meta.get("num_processes"), acc.process_index)  # fmt: skip
        self.state.load_state_dict(meta)
        acc.step = int(meta.get("accelerator_step", 0))
        self.next_number = max(self.next_number, checkpoint_number(path) + 1 if _NAME.fullmatch(path.name) else 0)
        self._rotate(path)  # finishes a rotation a crash cut short
        logger.info("resumed from %s at optimizer step %d", path, self.state.global_step)


def _check_finite(tensors: dict, where: str) -> None:
    bad = [k for k, v in tensors.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise ValueError(f"{where} holds non-finite values (NaN/inf) in {bad[:5]}; it is not saved or loaded")


def save_adapter_atomically(peft_model, output_dir: str | os.PathLike, is_main_process: bool = True) -> Path:
    """`save_pretrained` into a temp folder, then rename it to `<output_dir>/adapter` (replacing an older one).

    A crash leaves either the old or the new complete folder as `adapter`, or (between the two renames) none, plus
    hidden `.adapter-*` folders that the next run removes.
    """
    target = Path(output_dir) / ADAPTER_DIR
    if not is_main_process:
        return target
    tmp = make_temp_dir(target.parent, ".adapter-")
    try:
        peft_model.save_pretrained(str(tmp))
        for path in tmp.iterdir():
            if path.is_file():
                normal_mode(path)
                fsync_file(path)  # durable before the rename publishes it
        fsync_dir(tmp)
        if target.exists():
            old = temp_name(target.parent, ".adapter-old-")
            os.rename(target, old)
            os.rename(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, target)
        fsync_dir(target.parent)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
