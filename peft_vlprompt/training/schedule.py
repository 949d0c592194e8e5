"""The papers' learning-rate schedule (Dassl): constant warm-up epochs at a small lr, then cosine annealing.

Dassl (CoOp, ProGrad, KgCoOp, MaPLe, PromptSRC, RESTORE all use it) builds `CosineAnnealingLR(T_max=max_epoch)`
behind a `ConstantWarmupScheduler(warmup_epoch=1, cons_lr=1e-5)` and steps it once per epoch. Worked through, that
gives, for epoch e (0-based) of E:

    lr(e) = warmup_lr                                         for e < W
    lr(e) = base_lr * (1 + cos(pi * (e - W) / E)) / 2         for e >= W

so the first epoch after the warm-up runs at `base_lr` and the last one does not reach 0 (T_max counts the warm-up
epochs too). With `granularity="step"` the cosine position advances inside the epoch, `(e - W) + i / steps`, which has
the same shape, sampled per iteration. The schedule is a pure function of the position, so a resumed run needs no
scheduler state.
"""

import math

GRANULARITIES = ("epoch", "step")


def dassl_lr(
    epoch: int,
    *,
    base_lr: float,
    num_epochs: int,
    warmup_epochs: int = 1,
    warmup_lr: float = 1e-5,
    progress: float = 0.0,
) -> float:
    """Learning rate of `epoch` (0-based); `progress` in [0, 1) is the fraction of the epoch done (per-step mode)."""
    if num_epochs < 1:
        raise ValueError(f"`num_epochs` must be >= 1, got {num_epochs}")
    if warmup_epochs < 0:
        raise ValueError(f"`warmup_epochs` must be >= 0, got {warmup_epochs}")
    if not 0.0 <= progress < 1.0:
        raise ValueError(f"`progress` must be in [0, 1), got {progress}")
    if epoch < warmup_epochs:
        return warmup_lr
    position = epoch - warmup_epochs + progress
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * position / num_epochs))


def set_lr(optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (the wrapped optimizer's groups for ProGrad / accelerate)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
