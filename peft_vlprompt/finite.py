"""Finiteness checks: nothing non-finite is trained on silently, saved, evaluated as a result or published.

One place for the rule so the training loop, the adapter save/load hooks, the classifier and the cards say the same
thing: which tensor, how many of its values are NaN/inf, and where.
"""

from collections.abc import Iterable

import torch


def count_nonfinite(tensor: torch.Tensor) -> int:
    """Number of NaN/inf values of a floating tensor (0 for integer/bool tensors)."""
    if not (tensor.is_floating_point() or tensor.is_complex()):
        return 0
    return int((~torch.isfinite(tensor)).sum())


def nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> list[tuple[str, int, int]]:
    """`(name, non-finite count, numel)` of every tensor holding a NaN/inf value."""
    out = []
    for name, tensor in named:
        if tensor is None:
            continue
        bad = count_nonfinite(tensor.detach())
        if bad:
            out.append((name, bad, tensor.numel()))
    return out


def describe(found: list[tuple[str, int, int]], limit: int = 5) -> str:
    """The first `limit` entries as "`a` (3 of 8 values NaN/inf), `b` (...)", then how many more."""
    shown = ", ".join(f"`{name}` ({bad} of {numel} values NaN/inf)" for name, bad, numel in found[:limit])
    more = f" and {len(found) - limit} more" if len(found) > limit else ""
    return shown + more


def check_finite(named: Iterable[tuple[str, torch.Tensor]], what: str, hint: str = "") -> None:
    """Raise a `ValueError` naming every non-finite tensor of `named`; `what` says where ("adapter file x.safetensors")."""
    found = nonfinite(named)
    if found:
        raise ValueError(f"{what}: {describe(found)}" + (f"; {hint}" if hint else ""))


def all_finite(tensors: Iterable[torch.Tensor]) -> bool:
    """One device-side reduction (a single host sync) telling whether every tensor is finite."""
    flags = [torch.isfinite(t.detach()).all() for t in tensors if t is not None and t.is_floating_point()]
    return bool(torch.stack(flags).all()) if flags else True


def check_training_step(
    step: int,
    terms: dict[str, torch.Tensor],
    named_params: list[tuple[str, torch.Tensor]],
    *,
    check_grads: bool,
    lr: float | None = None,
) -> None:
    """After an optimizer step: raise `FloatingPointError` if a loss term, a gradient or a trained tensor is NaN/inf.

    One host sync when all is well; the diagnosis (which term/tensor went first) runs only on failure. `check_grads`
    is off under fp16 loss scaling, whose GradScaler expects (and skips) inf gradients.
    """
    tensors = list(terms.values()) + [p for _, p in named_params]
    if check_grads:
        tensors += [p.grad for _, p in named_params if p.grad is not None]
    if all_finite(tensors):
        return
    where = f"training stopped at optimizer step {step}"
    after = "; nothing non-finite was saved (earlier checkpoints hold finite prompts)"
    found = nonfinite((f"loss term {k}", v) for k, v in terms.items())
    if found:
        raise FloatingPointError(
            f"{where}: {describe(found)}: the images (pixel values), the model or the learning rate ({lr!r}) "
            "produced NaN/inf" + after
        )
    if check_grads:
        found = nonfinite((f"gradient of {n}", p.grad) for n, p in named_params)
        if found:
            raise FloatingPointError(f"{where}: {describe(found)} (the loss was finite)" + after)
    found = nonfinite(named_params)
    raise FloatingPointError(
        f"{where}: the optimizer step made {describe(found)} (loss and gradients were finite; learning rate "
        f"{lr!r}): lower the learning rate" + after
    )
