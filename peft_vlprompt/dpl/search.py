"""DPL search stage: first-order bilevel optimisation of the supernet (alpha on validation, prompts on training data).

Each step (Algorithm 1 of the paper, first-order as in the released code):

1. alpha step: cross-entropy on the next **validation** batch, gradient w.r.t. alpha only, Adam(lr 3.5e-3,
   betas (0.5, 0.999), no weight decay);
2. prompt step: cross-entropy on the next **training** batch, gradient w.r.t. the candidate prompts only, SGD
   (momentum 0.9, weight decay 5e-4, Dassl's schedule: constant warm-up epoch, then cosine, set once per epoch).

Only the parameters being updated require gradients in each half-step, so no backward work is spent on the others.
The processes of a multi-process run average their gradients with an all-reduce before each optimizer step (the
model is not wrapped in DDP: the two half-steps differentiate different parameters).

The engine is the training loop's: DataLoaders prepared by the accelerator over its `EpochSampler` (`batches.py`),
`skip_first_batches` on resume, the accelerator's autocast (bf16; fp16's gradient scaler is refused), and
`accelerator.log` for the losses, each layer's alpha entropy and its current argmax length.

Checkpoints are the training loop's (`peft_vlprompt.training.checkpoint.CheckpointManager`):
`<output_dir>/checkpoints/checkpoint_<n>/` in JSON + safetensors (never unpickled), published complete by a rename
with a manifest, `latest` = the newest complete one, rotation to `checkpoints_total_limit` after publishing. One holds
alpha and prompts (the adapter), both optimizers, the data position (epoch, batch, validation pass and batch), the
loss history and every process's RNG states; the learning rate is a pure function of the epoch, so resuming from it
reproduces the uninterrupted run bit for bit. The older format (`checkpoint-<step>/search_state.pt`, written with
`torch.save`) is refused with a message, never loaded.
"""

import contextlib
import json
import logging
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from peft import PeftConfig

from .._validation import parse_checkpointing_steps
from ..finite import check_training_step
from ..training.checkpoint import CheckpointManager, check_checkpoint, clean_stale_temps, resolve_checkpoint
from ..tuners.dpl import DPLSearchConfig, alpha_parameters, prompt_parameters
from .batches import TRAIN_STREAM, VAL_STREAM, CyclingLoader, end, epoch_batches, search_loader
from .export import alpha_summary
from .state import (
    METHOD,
    RESUMABLE_CHANGES,
    OneProcess,
    SearchState,
    latest_checkpoint,
    legacy_checkpoints,
    refuse_legacy_resume,
)

logger = logging.getLogger(__name__)

__all__ = ["DPLSearch", "DPLSearchArguments", "latest_checkpoint", "legacy_checkpoints", "prompt_lr",
           "refuse_legacy_resume"]  # fmt: skip


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
        checkpointing_steps: as the training loop's `--checkpointing_steps`: a checkpoint every N steps (an integer,
            as a string from the command line) or every "epoch"; a checkpoint is always written at the end.
        checkpoint_every: the older name, an int N (alias of `checkpointing_steps`; both with different values is an
            error); folded into `checkpointing_steps` and reset to None.
        checkpoints_total_limit: keep only this many checkpoints, deleting the oldest after each save (None: all).
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
    checkpointing_steps: str | None = field(
        default=None,
        metadata={"help": "Save a resumable checkpoint every N steps (an integer) or every 'epoch' (default: only "
                  "at the end, where one is always saved)."},
    )  # fmt: skip
    checkpoint_every: int | None = field(
        default=None, metadata={"help": "Older name of --checkpointing_steps (an integer N)."}
    )
    checkpoints_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only this many checkpoints (the oldest are deleted; None: all)."}
    )
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping norm (None: off)."})
    log_every: int = field(default=10, metadata={"help": "Log losses every N steps."})

    def __post_init__(self):
        for name in ("num_epochs", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        for name in ("val_batch_size", "max_steps", "checkpoint_every", "checkpoints_total_limit"):
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
        every = parse_checkpointing_steps(self.checkpointing_steps)  # the training loop's rule
        if self.checkpoint_every is not None:  # the alias, as training/cli_names.py's: one value or an error
            if every is not None and every != self.checkpoint_every:
                raise ValueError(f"`checkpoint_every` is an alias of `checkpointing_steps`: give one, got "
                                 f"checkpointing_steps={self.checkpointing_steps!r} and checkpoint_every="
                                 f"{self.checkpoint_every!r}")  # fmt: skip
            self.checkpointing_steps, self.checkpoint_every = str(self.checkpoint_every), None

    @property
    def checkpoint_interval(self) -> int | str | None:
        """`checkpointing_steps` parsed: an int, 'epoch' or None."""
        return parse_checkpointing_steps(self.checkpointing_steps)


def prompt_lr(epoch: int, args: DPLSearchArguments) -> float:
    """Dassl's schedule: `warmup_lr` for the warm-up epochs, then cosine over `num_epochs` (set once per epoch)."""
    if epoch < args.warmup_epochs:
        return args.warmup_lr
    return float(args.lr * 0.5 * (1.0 + math.cos(math.pi * (epoch - args.warmup_epochs) / args.num_epochs)))


class DPLSearch:
    """Runs the DPL search on a peft model carrying a `DPLSearchConfig` adapter.

    Args:
        model: `PeftModel` whose active adapter is a `DPLSearchConfig`.
        classifier: `PromptClassifier` over that model (class names, template); its forward gives the logits.
        train_dataset / val_dataset: map-style datasets whose items `collate_fn` stacks into
            `{"pixel_values", "labels"}`. Items must not draw from a global RNG (accelerate's DataLoader reads one
            batch ahead, so a resume could not replay such draws): for random augmentation pass
            `peft_vlprompt.training.data.AugmentedViews` (crop and flip seeded per epoch and image) with
            `keyed_train=True`; the validation data takes the test transform.
        args: `DPLSearchArguments`.
        output_dir: where checkpoints go.
        accelerator: an `accelerate.Accelerator` (device, autocast, processes); None: one process on the model's
            device.
        collate_fn: stacks a list of items into a batch (default `peft_vlprompt.data.collate`).
        keyed_train: `train_dataset` takes `(epoch, index)` keys, as `AugmentedViews` does (default: an index).
        run_info: more values that define the run (e.g. the CLI's dataset, shots, model), recorded in each checkpoint
            and required to be equal on resume.
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
        keyed_train: bool = False,
        run_info: dict | None = None,
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
        self.collate_fn, self.run_info = collate_fn, json.loads(json.dumps(run_info or {}))
        self.output_dir = Path(output_dir)
        self.accelerator, self.generators, self.adapter_name = accelerator, list(generators), adapter_name
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
        # DataLoaders through `accelerator.prepare`, as the training loop's: process r takes every N-th batch
        self.train_loader, self.train_sampler = search_loader(
            train_dataset, args.batch_size, collate_fn, seed=args.seed, stream=TRAIN_STREAM, keyed=keyed_train,
            drop_last=True, accelerator=accelerator,
        )  # fmt: skip
        self.val_batches = CyclingLoader(*search_loader(
            val_dataset, args.val_batch_size or args.batch_size, collate_fn, seed=args.seed, stream=VAL_STREAM,
            keyed=False, drop_last=False, accelerator=accelerator,
        ))  # fmt: skip
        self.epoch, self.batch_in_epoch, self.global_step = 0, 0, 0
        self.history: list[dict] = []
        self._saved_step: int | None = None  # the step of the last checkpoint written or resumed from
        peft_type = str(getattr(config.peft_type, "value", config.peft_type)).lower()
        self.checkpoints = CheckpointManager(
            accelerator or OneProcess(), self.output_dir, peft_model=model, optimizer=self.prompt_optimizer,
            state=SearchState(self, peft_type), adapter_config=config.to_dict(), total_limit=args.checkpoints_total_limit,
            extra={"alpha_optimizer": self.alpha_optimizer}, generators=self.generators, adapter_name=adapter_name,
        )  # fmt: skip
        if self.checkpoints.accelerator.is_main_process:  # hidden leftovers of a killed run (logged)
            clean_stale_temps(self.output_dir)

    # -- one step ------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.alphas[0].device

    def _loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        pixels = batch["pixel_values"].to(self._device())
        labels = batch["labels"].to(self._device())
        autocast = self.accelerator.autocast() if self.accelerator is not None else contextlib.nullcontext()
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
    def done(self) -> bool:
        return self.epoch >= self.args.num_epochs or (
            self.args.max_steps is not None and self.global_step >= self.args.max_steps
        )

    def run(self) -> list[dict]:
        """Search until `num_epochs` (or `max_steps`); returns the per-step loss history of this call."""
        start, every = len(self.history), self.args.checkpoint_interval
        try:
            while not self.done():
                lr = prompt_lr(self.epoch, self.args)
                for group in self.prompt_optimizer.param_groups:
                    group["lr"] = lr
                per_epoch = len(self.train_loader)
                # on resume, `skip_first_batches` drops the batches this epoch already used
                loader = epoch_batches(self.train_loader, self.train_sampler, self.epoch, self.batch_in_epoch)
                try:
                    for batch in loader:
                        losses = self.step(batch)
                        self.batch_in_epoch += 1
                        self.global_step += 1
                        self.history.append({"epoch": self.epoch, "step": self.global_step, "lr": lr, **losses})
                        if self.global_step % self.args.log_every == 0:
                            self._log(lr, losses)
                        if isinstance(every, int) and self.global_step % every == 0:
                            self.save_checkpoint()
                        if self.done():
                            break
                finally:
                    end(loader)  # a loader left early stays registered in accelerate's GradientState otherwise
                if self.batch_in_epoch >= per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
                    if every == "epoch":  # after the epoch counter moved: a resume starts the next epoch
                        self.save_checkpoint()
            self.save_checkpoint()
        finally:
            self.val_batches.close()
        return self.history[start:]

    def _log(self, lr: float, losses: dict[str, float]) -> None:
        """Losses, and per layer of each searched tower the alpha entropy and the current argmax length, to the log
        and to the accelerator's trackers (`accelerator.log`)."""
        summary = alpha_summary(self.model, self.adapter_name)
        values = {f"search/{k}": v for k, v in losses.items()} | {"search/lr": lr, "search/epoch": self.epoch}
        for tower, rows in summary["alpha_softmax"].items():
            for i, (probs, length) in enumerate(zip(rows, summary["chosen_lengths"][tower])):
                values[f"alpha_entropy/{tower}/layer_{i}"] = -sum(p * math.log(p) for p in probs if p > 0)
                values[f"chosen_length/{tower}/layer_{i}"] = length
        logger.info("epoch %d step %d lr %.2e %s; lengths %s", self.epoch, self.global_step, lr, losses,
                    summary["chosen_lengths"])  # fmt: skip
        if self.accelerator is not None and self.accelerator.trackers:
            self.accelerator.log(values, step=self.global_step)

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path | None:
        """Write the next `checkpoints/checkpoint_<n>/` (complete or absent; see `CheckpointManager`).

        Nothing is written when the last checkpoint (written or resumed from) is already at this step.
        """
        if self._saved_step == self.global_step:
            return None
        path = self.checkpoints.save()
        self._saved_step = self.global_step
        return path

    def _check_same_run(self, path: Path, meta: dict) -> None:
        """Resuming repeats the run: a search argument (other than how long to run, how often to checkpoint or log)
        or a supernet field that differs from the checkpoint's is refused, naming the old and the new value."""
        old_args, new_args = meta.get("search_args", {}), asdict(self.args)
        changed = [
            (k, v, new_args.get(k)) for k, v in old_args.items() if k not in RESUMABLE_CHANGES and new_args.get(k) != v
        ]
        config = self.model.peft_config[self.adapter_name]
        own = set(type(config).__dataclass_fields__) - set(PeftConfig.__dataclass_fields__)
        new_config = json.loads(json.dumps(config.to_dict(), default=str))
        old_config = meta.get("adapter_config", {})
        changed += [(k, old_config.get(k), new_config[k]) for k in sorted(own) if old_config.get(k) != new_config[k]]
        old_info = meta.get("run_info", {})
        changed += [(k, old_info.get(k), self.run_info.get(k)) for k in sorted(old_info.keys() | self.run_info.keys())
                    if old_info.get(k) != self.run_info.get(k)]  # fmt: skip
        if changed:
            raise ValueError(
                f"checkpoint {path} belongs to another search: "
                + "; ".join(f"`{k}` was {old!r}, now {new!r}" for k, old, new in changed)
                + ". Resume with the same values (only num_epochs, max_steps, checkpointing_steps, "
                "checkpoints_total_limit and log_every may change), or start afresh into another --output_dir"
            )

    def resume(self, checkpoint: str | os.PathLike) -> Path:
        """Restore a checkpoint folder, or `"latest"` (the newest complete one under `<output_dir>/checkpoints`)."""
        refuse_legacy_resume(checkpoint, self.output_dir)
        path = resolve_checkpoint(str(checkpoint), str(self.output_dir))
        meta = check_checkpoint(path, METHOD, self.checkpoints.state.peft_type)  # another method's is refused
        if meta.get("world_size") != self.world_size:
            raise ValueError(
                f"checkpoint {path} was written by {meta.get('world_size')} processes, this run has "
                f"{self.world_size}; resume with the same number of processes"
            )
        self._check_same_run(path, meta)
        self.checkpoints.load(path)
        self._saved_step = self.global_step
        logger.info("resumed the DPL search from %s (step %d)", path, self.global_step)
        return path
