"""DPL search stage: first-order bilevel optimisation of the supernet (alpha on validation, prompts on training data).

Each step (Algorithm 1 of the paper, first-order as in the released code):

1. alpha step: cross-entropy on the next **validation** batch, gradient w.r.t. alpha only, Adam(lr 3.5e-3,
   betas (0.5, 0.999), no weight decay);
2. prompt step: cross-entropy on the next **training** batch, gradient w.r.t. the candidate prompts only, SGD
   (momentum 0.9, weight decay 5e-4, Dassl's schedule: constant warm-up epoch, then cosine, set once per epoch).

Only the parameters being updated require gradients in each half-step, so no backward work is spent on the others.
The processes of a multi-process run average their gradients with an all-reduce before each optimizer step (the
model is not wrapped in DDP: the two half-steps differentiate different parameters).

A checkpoint (`checkpoint-<step>/`) holds alpha and prompts (the peft adapter state), both optimizers, the data
position (epoch, batch, validation pass and batch) and every process's RNG states; the learning rate is a pure
function of the epoch, so resuming from it reproduces the uninterrupted run bit for bit.
"""

import logging
import math
import os
import pickle
import random
import shutil
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from .._atomic import fsync_dir, fsync_file, temp_name
from ..finite import check_training_step
from ..tuners.dpl import DPLSearchConfig, alpha_parameters, prompt_parameters
from .batches import TRAIN_STREAM, VAL_STREAM, CyclingBatches, pass_batches

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint-"
STATE_FILE = "search_state.pt"


@dataclass
class DPLSearchArguments:
    """Hyperparameters of the DPL search (defaults: the released `TrainerSupernet/fewshot.yaml`).

    Args:
        num_epochs: passes over the training set (80 in the released few-shot config).
        batch_size / val_batch_size: per-process batch sizes of the prompt and alpha steps.
        lr, momentum, weight_decay, warmup_epochs, warmup_lr: the prompts' SGD and Dassl schedule.
        alpha_lr, alpha_beta1, alpha_beta2, alpha_weight_decay: the architecture weights' Adam.
        seed: data order (and nothing else: seed the model's initialisation before creating it).
        max_steps: stop after this many steps (the schedule still spans `num_epochs`; resume continues it).
        checkpoint_every: write a checkpoint every this many steps (and at the end); None: only at the end.
        max_grad_norm: clip each half-step's gradient norm (None: no clipping, as the released code).
    """

    num_epochs: int = field(default=80, metadata={"help": "Passes over the training set."})
    batch_size: int = field(default=4, metadata={"help": "Training batch size of the prompt step (per process)."})
    val_batch_size: int | None = field(
        default=None, metadata={"help": "Validation batch size of the alpha step (per process); default batch_size."}
    )
    lr: float = field(default=3.5e-3, metadata={"help": "Prompt SGD learning rate."})
    momentum: float = field(default=0.9, metadata={"help": "Prompt SGD momentum."})
    weight_decay: float = field(default=5e-4, metadata={"help": "Prompt SGD weight decay."})
    warmup_epochs: int = field(default=1, metadata={"help": "Epochs at the constant warm-up learning rate."})
    warmup_lr: float = field(default=1e-5, metadata={"help": "Warm-up learning rate of the prompts."})
    alpha_lr: float = field(default=3.5e-3, metadata={"help": "Adam learning rate of the architecture weights."})
    alpha_beta1: float = field(default=0.5, metadata={"help": "Adam beta1 of alpha."})
    alpha_beta2: float = field(default=0.999, metadata={"help": "Adam beta2 of alpha."})
    alpha_weight_decay: float = field(default=0.0, metadata={"help": "Adam weight decay of alpha."})
    seed: int = field(default=1, metadata={"help": "Seed of the training and validation batch order."})
    max_steps: int | None = field(default=None, metadata={"help": "Stop after this many steps (None: all)."})
    checkpoint_every: int | None = field(default=None, metadata={"help": "Checkpoint every N steps (None: end)."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping norm (None: off)."})
    log_every: int = field(default=10, metadata={"help": "Log losses every N steps."})

    def __post_init__(self):
        for name in ("num_epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("val_batch_size", "max_steps", "checkpoint_every"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        for name in ("lr", "alpha_lr"):
            if not getattr(self, name) > 0:
                raise ValueError(f"`{name}` must be > 0, got {getattr(self, name)}")
        if self.warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be >= 0, got {self.warmup_epochs}")
        for name in ("alpha_beta1", "alpha_beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be in [0, 1), got {getattr(self, name)}")
        if self.max_grad_norm is not None and not self.max_grad_norm > 0:
            raise ValueError(f"`max_grad_norm` must be > 0, got {self.max_grad_norm}")


def prompt_lr(epoch: int, args: DPLSearchArguments) -> float:
    """Dassl's schedule: `warmup_lr` for the warm-up epochs, then cosine over `num_epochs` (set once per epoch)."""
    if epoch < args.warmup_epochs:
        return args.warmup_lr
    return float(args.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - args.warmup_epochs) / args.num_epochs)))


def _rng_state(generators: Sequence[torch.Generator]) -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": [g.get_state() for g in generators],
    }


def _set_rng_state(state: dict, generators: Sequence[torch.Generator]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if len(state["generators"]) != len(generators):
        raise ValueError(
            f"the checkpoint holds {len(state['generators'])} extra generator states, {len(generators)} were given"
        )
    for generator, saved in zip(generators, state["generators"]):
        generator.set_state(saved)


def latest_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step under `output_dir`, or None."""
    root = Path(output_dir)
    found = [
        p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit()
    ]
    return max(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX) :])) if found else None


class DPLSearch:
    """Runs the DPL search on a peft model carrying a `DPLSearchConfig` adapter.

    Args:
        model: `PeftModel` whose active adapter is a `DPLSearchConfig`.
        classifier: `PromptClassifier` over that model (class names, template); its forward gives the logits.
        train_dataset / val_dataset: map-style datasets whose items `collate_fn` stacks into
            `{"pixel_values", "labels"}` (e.g. `datasets.Dataset.with_transform(make_transform(...))`).
        args: `DPLSearchArguments`.
        output_dir: where checkpoints go.
        accelerator: an `accelerate.Accelerator` (device, autocast, processes); None: one process on the model's
            device.
        collate_fn: stacks a list of items into a batch (default `peft_vlprompt.data.collate`).
        generators: extra `torch.Generator`s the data pipeline draws from (e.g. a transform's), saved and restored
            with the checkpoints; the global Python/NumPy/torch RNGs are always saved.
        adapter_name: the supernet adapter.

    Example:
        >>> search = DPLSearch(supernet, classifier, train, val, DPLSearchArguments(num_epochs=5), "runs/dpl")
        >>> search.run()  # then `peft_vlprompt.dpl.save_search_result(supernet, "runs/dpl")`
    """

    def __init__(
        self,
        model: torch.nn.Module,
        classifier: torch.nn.Module,
        train_dataset: Sequence,
        val_dataset: Sequence | None,
        args: DPLSearchArguments,
        output_dir: str | os.PathLike,
        *,
        accelerator=None,
        collate_fn: Callable | None = None,
        generators: Sequence[torch.Generator] = (),
        adapter_name: str = "default",
    ) -> None:
        config = getattr(model, "peft_config", {}).get(adapter_name)
        if not isinstance(config, DPLSearchConfig):
            raise TypeError(
                f"the model's adapter {adapter_name!r} must be a DPLSearchConfig, got {type(config).__name__}"
            )
        if val_dataset is None or len(val_dataset) == 0:
            raise ValueError(
                "DPL's search needs validation data (alpha is learned on it): `val_dataset` is "
                f"{'None' if val_dataset is None else 'empty'}; use a dataset with a val split"
            )
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("`train_dataset` is empty: the prompts of the supernet are learned on it")
        if accelerator is not None and accelerator.scaler is not None:
            raise ValueError("fp16 with a gradient scaler is not supported by the DPL search; use bf16 or fp32")
        if collate_fn is None:
            from ..data import collate as collate_fn
        self.model, self.classifier, self.args = model, classifier, args
        self.train_dataset, self.collate_fn = train_dataset, collate_fn
        self.output_dir = Path(output_dir)
        self.accelerator, self.generators, self.adapter_name = accelerator, list(generators), adapter_name
        self.rank = accelerator.process_index if accelerator is not None else 0
        self.world_size = accelerator.num_processes if accelerator is not None else 1
        self.alphas = alpha_parameters(model, adapter_name)
        self.prompts = prompt_parameters(model, adapter_name)
        self.alpha_optimizer = torch.optim.Adam(
            self.alphas,
            lr=args.alpha_lr,
            betas=(args.alpha_beta1, args.alpha_beta2),
            weight_decay=args.alpha_weight_decay,
        )
        self.prompt_optimizer = torch.optim.SGD(
            self.prompts, lr=prompt_lr(0, args), momentum=args.momentum, weight_decay=args.weight_decay
        )
        self.val_batches = CyclingBatches(
            val_dataset,
            args.val_batch_size or args.batch_size,
            collate_fn,
            seed=args.seed,
            stream=VAL_STREAM,
            rank=self.rank,
            world_size=self.world_size,
        )
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self._resumed: tuple[Path, int] | None = None  # (checkpoint, step) this search resumed from

    # -- one step ------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.alphas[0].device

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixel_values"].to(self._device())
        labels = batch["labels"].to(self._device())
        autocast = self.accelerator.autocast() if self.accelerator is not None else _null_context()
        with autocast:
            logits = self.classifier(pixels)
        return F.cross_entropy(logits.float(), labels)

    def _half_step(self, batch, params, optimizer) -> float:
        others = self.prompts if params is self.alphas else self.alphas
        for p in others:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        try:
            loss = self._loss(batch)
            grads = torch.autograd.grad(loss, params)
            if self.world_size > 1:
                grads = [self.accelerator.reduce(g, reduction="mean") for g in grads]
            for p, g in zip(params, grads):
                p.grad = g
            if self.args.max_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(params, self.args.max_grad_norm)
            optimizer.step()
            kind = "alpha" if params is self.alphas else "prompt"  # nothing non-finite trained on or checkpointed
            check_training_step(self.global_step + 1, {f"{kind}_loss": loss.detach()},
                                [(f"{kind}[{i}]", p) for i, p in enumerate(params)], check_grads=True,
                                lr=optimizer.param_groups[0]["lr"])  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
        finally:
            for p in others:
                p.requires_grad_(True)
        return float(loss.detach())

    def step(self, train_batch: dict[str, torch.Tensor]) -> dict[str, float]:
        """One alpha step on the next validation batch, then one prompt step on `train_batch`."""
        self.model.train()
        self.classifier.train()
        val_loss = self._half_step(next(self.val_batches), self.alphas, self.alpha_optimizer)
        train_loss = self._half_step(train_batch, self.prompts, self.prompt_optimizer)
        return {"val_loss": val_loss, "train_loss": train_loss}

    # -- the loop ------------------------------------------------------------------------------------------------
    def train_batches(self, epoch: int) -> list[list[int]]:
        return pass_batches(
            len(self.train_dataset),
            self.args.batch_size,
            seed=self.args.seed,
            stream=TRAIN_STREAM,
            pass_index=epoch,
            drop_last=True,
            rank=self.rank,
            world_size=self.world_size,
        )

    def done(self) -> bool:
        return self.epoch >= self.args.num_epochs or (
            self.args.max_steps is not None and self.global_step >= self.args.max_steps
        )

    def run(self) -> list[dict]:
        """Search until `num_epochs` (or `max_steps`); returns the per-step loss history of this call."""
        start = len(self.history)
        while not self.done():
            lr = prompt_lr(self.epoch, self.args)
            for group in self.prompt_optimizer.param_groups:
                group["lr"] = lr
            batches = self.train_batches(self.epoch)
            while self.batch_in_epoch < len(batches) and not self.done():
                indices = batches[self.batch_in_epoch]
                losses = self.step(self.collate_fn([self.train_dataset[i] for i in indices]))
                self.batch_in_epoch += 1
                self.global_step += 1
                self.history.append({"epoch": self.epoch, "step": self.global_step, "lr": lr, **losses})
                if self.global_step % self.args.log_every == 0:
                    logger.info("epoch %d step %d lr %.2e %s", self.epoch, self.global_step, lr, losses)
                if self.args.checkpoint_every and self.global_step % self.args.checkpoint_every == 0:
                    self.save_checkpoint()
            if self.batch_in_epoch >= len(batches):
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.save_checkpoint()
        return self.history[start:]

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "adapter": get_peft_model_state_dict(self.model, adapter_name=self.adapter_name),
            "alpha_optimizer": self.alpha_optimizer.state_dict(),
            "prompt_optimizer": self.prompt_optimizer.state_dict(),
            "position": {"epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step},
            "val_batches": self.val_batches.state_dict(),
            "args": asdict(self.args),
            "world_size": self.world_size,
            "history": self.history,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["world_size"] != self.world_size:
            raise ValueError(
                f"the checkpoint was written by {state['world_size']} processes, this run has {self.world_size}; "
                "resume with the same number of processes"
            )
        result = set_peft_model_state_dict(self.model, state["adapter"], adapter_name=self.adapter_name)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"the checkpoint's adapter has unexpected keys: {result.unexpected_keys[:5]}")
        self.alpha_optimizer.load_state_dict(state["alpha_optimizer"])
        self.prompt_optimizer.load_state_dict(state["prompt_optimizer"])
        position = state["position"]
        self.epoch, self.batch_in_epoch = position["epoch"], position["batch_in_epoch"]
        self.global_step = position["global_step"]
        self.val_batches.load_state_dict(state["val_batches"])
        self.history = list(state["history"])

    def save_checkpoint(self) -> Path:
        """Write `checkpoint-<step>/` (state on the main process, RNG states from every process), atomically.

        It is written into a hidden folder and published by a rename, so every `checkpoint-<step>` is complete; an
        existing folder of the same step is moved aside first and deleted only after the new one is in place.
        """
        final = self.output_dir / f"{CHECKPOINT_PREFIX}{self.global_step}"
        if self._resumed == (final, self.global_step) and final.is_dir():
            return final  # nothing happened since resuming from it: rewriting would only open a window for a crash
        staging = self.output_dir / f".{final.name}.tmp"
        if self.rank == 0:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        self._barrier()
        if self.rank == 0:
            _atomic_save(self.state_dict(), staging / STATE_FILE)
        _atomic_save(_rng_state(self.generators), staging / f"rng_{self.rank}.pt")
        self._barrier()
        if self.rank == 0:
            fsync_dir(staging)
            old = temp_name(self.output_dir, f".{final.name}.old-") if final.exists() else None
            if old is not None:
                os.rename(final, old)
            os.rename(staging, final)
            fsync_dir(self.output_dir)
            if old is not None:
                shutil.rmtree(old)
            logger.info("saved DPL search checkpoint %s", final)
        self._barrier()
        return final

    def resume(self, checkpoint: str | os.PathLike) -> None:
        """Restore a checkpoint directory (or `"latest"` under `output_dir`)."""
        path = latest_checkpoint(self.output_dir) if str(checkpoint) == "latest" else Path(checkpoint)
        if path is None or not (path / STATE_FILE).is_file():
            raise FileNotFoundError(f"no DPL search checkpoint at {checkpoint!r} (output_dir {self.output_dir})")
        self.load_state_dict(_safe_load(path / STATE_FILE, self._device()))
        _set_rng_state(_safe_load(path / f"rng_{self.rank}.pt", "cpu"), self.generators)
        self._resumed = (path, self.global_step)
        logger.info("resumed the DPL search from %s (step %d)", path, self.global_step)

    def _barrier(self) -> None:
        if self.world_size > 1:
            self.accelerator.wait_for_everyone()


def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    fsync_file(tmp)
    os.replace(tmp, path)


def _safe_load(path: Path, map_location) -> dict:
    """`torch.load` with `weights_only=True` (tensors, containers and numbers only: a crafted pickle does not run)."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError) as e:
        raise ValueError(f"DPL search checkpoint file {path} cannot be loaded as weights only: {e}") from e


class _null_context:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False
