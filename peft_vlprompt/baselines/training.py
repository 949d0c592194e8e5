"""What the training loop does differently for a method whose recipe is not Dassl's SGD (CLIP-LoRA: AdamW and a
per-iteration cosine to `eta_min` over a fixed number of iterations). Used by `training.loop`."""

import logging
import math

logger = logging.getLogger(__name__)

# Dassl/SGD-only arguments: a user value for them would be ignored by AdamW and the iteration cosine
SGD_ONLY = ("momentum", "warmup_epochs", "warmup_lr", "lr_granularity")


def user_given(args) -> set[str]:
    """Fields the user set (command line or `--config` file), not the default run, preset or default."""
    from ..training.args import COMMAND_LINE, CONFIG_FILE

    if args.sources:
        return {k for k, source in args.sources.items() if source in (COMMAND_LINE, CONFIG_FILE)}
    return args.explicit()


def check_optimizer_args(spec, args) -> None:
    """Refuse SGD-schedule arguments the method's optimizer would ignore (before any load). Probes ("closed_form")
    refuse every training-loop argument themselves (`probe_run.check_probe_args`)."""
    if spec.optimizer != "adamw":
        return
    ignored = sorted(set(SGD_ONLY) & user_given(args))
    if ignored:
        raise ValueError(f"{', '.join(f'`{k}`={getattr(args, k)!r}' for k in ignored)} would be ignored: method "
                         f"{spec.name!r} trains with {spec.optimizer} and a per-iteration cosine (its published "
                         "recipe), not SGD with Dassl's warm-up; drop them")  # fmt: skip
    if args.shots == -1 and args.num_epochs is None:
        raise ValueError(f"method {spec.name!r} trains for 500 x shots iterations: with `shots`=-1 (all images) give "
                         "--num_epochs")  # fmt: skip


def weight_decay(spec, preset, args) -> float:
    """The user's weight decay, else the preset's (CLIP-LoRA: 1e-2, not Dassl's 5e-4)."""
    if spec.optimizer == "sgd" or "weight_decay" in user_given(args):
        return args.weight_decay
    return float(preset.extra.get("weight_decay", args.weight_decay))


def make_optimizer(spec, preset, args, params):
    """The method's optimizer over `params` (AdamW with the preset's betas for "adamw")."""
    import torch

    if spec.optimizer == "adamw":
        betas = tuple(preset.extra.get("betas", (0.9, 0.999)))
        return torch.optim.AdamW(params, lr=args.lr, betas=betas, weight_decay=weight_decay(spec, preset, args))
    return torch.optim.SGD(params, lr=args.warmup_lr, momentum=args.momentum, weight_decay=args.weight_decay)


def iteration_budget(spec, preset, args, total_steps: int) -> int | None:
    """Steps the per-iteration cosine spans (the run stops there): the preset's iterations (500 x shots) unless the
    user set the epochs, then the epochs' steps. None for Dassl's per-epoch schedule."""
    if spec.optimizer == "sgd":
        return None
    iterations = preset.extra.get("iterations")
    if iterations is None or "num_epochs" in user_given(args):
        return total_steps
    if total_steps < iterations:
        logger.warning("%s: %d epochs give %d optimizer steps, fewer than the recipe's %d iterations (batch size, "
                       "processes or gradient accumulation differ from the preset's); the cosine spans %d",
                       spec.name, args.num_epochs, total_steps, iterations, total_steps)  # fmt: skip
        return total_steps
    return iterations


def cosine_lr(step: int, *, base_lr: float, total: int, eta_min: float) -> float:
    """`CosineAnnealingLR(T_max=total, eta_min)` after `step` scheduler steps (stepped once per iteration)."""
    return eta_min + (base_lr - eta_min) * (1 + math.cos(math.pi * min(step, total) / total)) / 2


def optimizer_record(spec, preset, args, budget: int | None) -> dict:
    """What the results record about a non-SGD recipe."""
    if spec.optimizer == "sgd":
        return {}
    return {"optimizer": spec.optimizer, "weight_decay": weight_decay(spec, preset, args),
            "lr_schedule": f"cosine per iteration to {preset.extra.get('eta_min', 0.0)} over {budget} iterations"}  # fmt: skip
