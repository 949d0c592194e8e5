"""Linear probes on frozen CLIP image features, the CLIP paper's protocol (Radford et al. 2021, appendix A.3):
multinomial logistic regression fitted with L-BFGS, its L2 regularisation chosen on the validation split only.

Two probes:
- plain: weights and bias start at zero, the penalty is `l2 / 2 * ||W||^2`;
- text-initialised: the weights start at zero-shot CLIP's classifier (`logit_scale * text features` of the
  hand-crafted template) and the penalty pulls them back there, `l2 / 2 * ||W - W_text||^2`, so the initialisation
  matters (a strictly convex problem forgets where it started; large `l2` gives zero-shot CLIP back). This is our
  definition of a text-initialised probe, not LP++'s (which blends text and visual weights with learned multipliers).
Both fit weights for the training classes only: they have no classifier for classes they never saw.

The features are the L2-normalised image features `PromptClassifier` uses, from un-augmented images. The bias is
not penalised. Everything runs in float64 (L-BFGS's line search needs the precision).
"""

from dataclasses import dataclass

import torch
import torch.nn.functional as F

# 1e-6 .. 1e2 in half decades (the CLIP paper sweeps 96 log-spaced values of C = 1 / l2; few-shot problems are small)
L2_GRID = tuple(10.0 ** (k / 2) for k in range(-12, 5))


@dataclass
class LinearProbe:
    """`logits = features @ weight.T + bias` (weight `[C, D]`, bias `[C]`), fitted with penalty `l2`."""

    weight: torch.Tensor
    bias: torch.Tensor
    l2: float

    def logits(self, features: torch.Tensor) -> torch.Tensor:
        return features.double() @ self.weight.T + self.bias


def objective(weight, bias, x, y, l2: float, anchor=None) -> torch.Tensor:
    """Mean cross-entropy + `l2 / 2 * ||weight - anchor||^2` (anchor 0 when None)."""
    shift = weight if anchor is None else weight - anchor
    return F.cross_entropy(x @ weight.T + bias, y) + 0.5 * l2 * shift.pow(2).sum()


def fit_probe(x, y, num_classes: int, l2: float, anchor=None, max_iter: int = 1000) -> LinearProbe:
    """Minimise `objective` with full-batch L-BFGS (strong-Wolfe line search), from `anchor` (else zeros)."""
    if not l2 > 0:
        raise ValueError(f"`l2` must be > 0 (the problem is then strictly convex), got {l2!r}")
    x, y = x.double(), y.long()
    anchor = None if anchor is None else anchor.double()
    weight = (
        torch.zeros(num_classes, x.shape[1], dtype=x.dtype) if anchor is None else anchor.clone()
    ).requires_grad_()
    bias = torch.zeros(num_classes, dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iter, history_size=20,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        optimizer.zero_grad()
        loss = objective(weight, bias, x, y, l2, anchor)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return LinearProbe(weight.detach(), bias.detach(), float(l2))


def accuracy(probe: LinearProbe, x, y) -> float:
    return 100.0 * probe.logits(x).argmax(-1).eq(y).double().mean().item()


def select_probe(x_train, y_train, x_val, y_val, num_classes: int, anchor=None, grid=L2_GRID):
    """Fit one probe per `l2` of `grid` on the training features and keep the one with the best validation accuracy
    (ties: the strongest regularisation). Only the validation split is scored. Returns `(probe, {l2: accuracy})`."""
    scores, best = {}, None
    for l2 in sorted(grid):
        probe = fit_probe(x_train, y_train, num_classes, l2, anchor)
        scores[l2] = accuracy(probe, x_val, y_val)
        if best is None or scores[l2] >= scores[best.l2]:
            best = probe
    return best, scores
