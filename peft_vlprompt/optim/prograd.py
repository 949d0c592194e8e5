"""ProGrad (Zhu et al., ICCV'23, https://arxiv.org/abs/2205.14865) as an optimizer wrapper that is correct under DDP.

ProGrad removes from the task ("domain-specific") gradient G_d its component that conflicts with the gradient G_g of a
general-knowledge loss (soft cross-entropy to the zero-shot CLIP teacher). Per parameter tensor:

    G = G_d - lambda_ * (G_d . G_g_hat) * G_g_hat    if G_d . G_g < 0,    G = G_d otherwise,    G_g_hat = G_g / |G_g|

The general-knowledge loss only defines the direction: it is never added to the task loss.
"""

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

_HOOK_DICTS = (
    "_optimizer_step_pre_hooks",
    "_optimizer_step_post_hooks",
    "_optimizer_state_dict_pre_hooks",
    "_optimizer_state_dict_post_hooks",
    "_optimizer_load_state_dict_pre_hooks",
    "_optimizer_load_state_dict_post_hooks",
)


class ProGrad(torch.optim.Optimizer):
    """Wraps any `torch.optim.Optimizer` and projects the task gradient away from a general direction before stepping.

    It subclasses `torch.optim.Optimizer` (without owning any state: `param_groups`, `state` and `defaults` are the
    wrapped optimizer's), so LR schedulers, `accelerator.prepare` and `accelerator.save_state` accept it.

    Usage (one micro-step; `prograd` is the object you built, `optimizer` what `accelerator.prepare` returned — the
    accelerate wrapper does not forward `add_general_direction`):

    ```python
    prograd = ProGrad(torch.optim.SGD(params, lr=2e-3, momentum=0.9), lambda_=1.0)
    model, optimizer = accelerator.prepare(model, prograd)
    with accelerator.accumulate(model):
        logits = model(...)
        prograd.add_general_direction(prograd_general_loss(logits, teacher)["prograd_kl"])  # BEFORE backward
        accelerator.backward(F.cross_entropy(logits, labels))
        optimizer.step()
        optimizer.zero_grad()
    ```

    Semantics:
        - `add_general_direction(loss)` takes G_g with `torch.autograd.grad` (never a second `.backward()`, which on a
          DDP forward fires the gradient hooks twice and silently desynchronises ranks) and sums it over the
          gradient-accumulation micro-steps until `step()`. It must be called *before* the task loss's
          `backward()` of the same micro-step (the graph is retained for it), and needs non-reentrant activation
          checkpointing (`use_reentrant=False`): reentrant checkpointing refuses `autograd.grad`.
        - `step()`: when `torch.distributed` is initialised with more than one rank, the summed G_g of every rank is
          averaged with one all-reduce of a flat buffer (ranks that added no general direction join with zeros, so
          the collective never hangs). Then every parameter tensor with a `.grad` and a finite, non-zero reference
          is projected, the wrapped optimizer steps, and the reference is cleared. The projection therefore acts on
          the logical-batch gradient (summed over micro-steps, averaged over ranks), identical on every rank.
        - `zero_grad()` also clears the reference, like the gradients it goes with. This is what discards the
          reference when a `GradScaler` skips a step on inf/nan (the wrapped `step()` is then never called).

    Mixed precision: `GradScaler.step(prograd)` unscales `.grad` through `param_groups` (shared with the wrapped
    optimizer) and then calls `prograd.step()`, so the projection sees unscaled task gradients. The reference may be
    scaled (e.g. pass `scaler.scale(loss)` to avoid fp16 underflow) or divided by the accumulation steps: the
    projection only uses the unit vector G_g_hat and the sign of G_d . G_g, both invariant to a positive scale that
    is the same for all micro-steps of one step. Gradient clipping done before `step()` (`clip_grad_norm_`) happens
    before the projection; for 0 <= lambda_ <= 2 the projection never increases the norm, so the clip bound holds.

    Not supported: optimizers that re-evaluate a closure several times per step (LBFGS) and sharded parameters
    (FSDP/DeepSpeed ZeRO): the projection needs each full parameter tensor.

    Args:
        optimizer (`torch.optim.Optimizer`): the optimizer to wrap (its parameters that require grad are projected).
        lambda_ (`float`, *optional*, defaults to `1.0`): strength of the projection; 1 removes the conflicting
            component fully, 0 is the plain optimizer. The paper uses 1.0 (0.8 for 8/16 shots on Flowers/DTD/EuroSAT).
        eps (`float`, *optional*, defaults to `1e-12`): a reference whose norm is <= `eps` counts as zero (skipped).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, lambda_: float = 1.0, eps: float = 1e-12) -> None:
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"`optimizer` must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if isinstance(optimizer, ProGrad):
            raise TypeError("`optimizer` is already a ProGrad; wrap the underlying optimizer once")
        self.optimizer = optimizer
        self.lambda_ = _check_lambda(lambda_)
        self.eps = _check_eps(eps)
        # Summed general direction, keyed by parameter; None when nothing is pending.
        self._reference: dict[torch.Tensor, torch.Tensor] | None = None
        self._stats: dict[str, torch.Tensor] = {}
        # `Optimizer.__init__` is not called (it would create a second set of param_groups); set up what its
        # methods (hooks, profiling) expect instead.
        for name in _HOOK_DICTS:
            setattr(self, name, OrderedDict())
        self._patch_step_function()

    # The wrapped optimizer owns all optimizer state; expose it under the standard names.
    @property
    def param_groups(self) -> list[dict[str, Any]]:
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.optimizer.param_groups = value

    @property
    def state(self) -> dict:
        return self.optimizer.state

    @state.setter
    def state(self, value: dict) -> None:
        self.optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        return self.optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.optimizer.defaults = value

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        self.optimizer.add_param_group(param_group)

    def __repr__(self) -> str:
        return f"ProGrad(lambda_={self.lambda_}, eps={self.eps}, optimizer={self.optimizer!r})"

    def __getstate__(self) -> dict[str, Any]:
        # Drop instance-level `step` patches (LR schedulers, accelerate): they are closures and cannot be pickled.
        return {k: v for k, v in self.__dict__.items() if k not in ("step", "_opt_called")}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        for name in _HOOK_DICTS:
            self.__dict__.setdefault(name, OrderedDict())

    def _trainable_params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"] if p.requires_grad]

    @property
    def has_reference(self) -> bool:
        """Whether a general direction is pending (added since the last `step()` / `zero_grad()`)."""
        return self._reference is not None

    def add_general_direction(self, loss: torch.Tensor) -> None:
        """Adds the gradient of the general-knowledge `loss` to the pending reference G_g.

        Call once per micro-step, before `backward()` of the task loss of that micro-step. `loss` may be scaled by
        any positive factor that is the same for every micro-step of one optimizer step (see the class docstring).
        """
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1:
            raise TypeError(f"`loss` must be a scalar tensor, got {type(loss).__name__}")
        if not loss.requires_grad:
            raise ValueError("`loss` does not require grad: compute it from the model outputs, outside `no_grad`")
        params = self._trainable_params()
        if not params:
            raise ValueError("the wrapped optimizer has no parameter that requires grad")
        # autograd.grad does not run the AccumulateGrad nodes, so DDP's reducer hooks do not fire for this loss.
        grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
        if all(g is None for g in grads):
            logger.warning("the general-direction loss does not depend on any parameter of the optimizer")
        if self._reference is None:
            self._reference = {}
        for p, g in zip(params, grads):
            g = torch.zeros_like(p) if g is None else g.detach()
            previous = self._reference.get(p)
            self._reference[p] = g if previous is None else previous + g

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zeroes the wrapped optimizer's gradients and discards any pending general direction."""
        self._reference = None
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """Projects the conflicting task gradients, steps the wrapped optimizer, and clears the reference.

        A `closure` is evaluated once (with grad enabled) before the projection; the wrapped optimizer is then
        stepped without it.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        try:
            reference = self._synced_reference()
            self._stats = {}
            if reference is not None:
                with torch.no_grad():
                    self._project(reference)
            self.optimizer.step()
        finally:
            self._reference = None
        return loss

    def _synced_reference(self) -> dict[torch.Tensor, torch.Tensor] | None:
        """Averages the pending reference over ranks (one all-reduce of a flat fp32 buffer) when distributed."""
        reference = self._reference
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return reference
        params = self._trainable_params()
        if not params:
            return None
        device = params[0].device
        pieces = []
        for p in params:
            r = None if reference is None else reference.get(p)
            pieces.append(torch.zeros(p.numel(), device=device) if r is None else r.reshape(-1).float().to(device))
        # The last slot counts the ranks that hold a reference: every rank joins the collective even without one.
        pieces.append(torch.full((1,), 0.0 if reference is None else 1.0, device=device))
        flat = torch.cat(pieces)
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        if flat[-1].item() == 0:
            return None
        flat = flat[:-1] / dist.get_world_size()
        synced, offset = {}, 0
        for p in params:
            synced[p] = flat[offset : offset + p.numel()].view_as(p).to(p.device)
            offset += p.numel()
        return synced

    def _project(self, reference: dict[torch.Tensor, torch.Tensor]) -> None:
        # Written without data-dependent Python branches (torch.where instead of `if dot < 0`), so the step does not
        # synchronise the host with the device once per tensor.
        n_valid, n_projected, cos_sum = [], [], []
        for group in self.param_groups:
            for p in group["params"]:
                r = reference.get(p)
                if p.grad is None or r is None:
                    continue
                if p.grad.is_sparse:
                    raise ValueError("ProGrad does not support sparse gradients")
                g = p.grad.reshape(-1).float()
                r = r.reshape(-1).float().to(g.device)
                r_norm = torch.linalg.vector_norm(r)
                valid = torch.isfinite(r_norm) & (r_norm > self.eps)
                r_hat = torch.where(valid, r / r_norm, torch.zeros_like(r))
                dot = g @ r_hat  # G_d . G_g_hat (0 where the reference is unusable)
                conflict = valid & (dot < 0)
                coef = torch.where(conflict, self.lambda_ * dot, torch.zeros_like(dot))
                g_norm = torch.linalg.vector_norm(g)
                # `g` may alias `p.grad` (fp32): build the result out of place, then copy (one rounding for bf16).
                p.grad.copy_((g - coef * r_hat).view_as(p.grad))
                cos = torch.where(valid & (g_norm > 0), dot / g_norm.clamp_min(torch.finfo(g.dtype).tiny), 0.0)
                n_valid.append(valid.float())
                n_projected.append(conflict.float())
                cos_sum.append(cos)
        if n_valid:
            device = n_valid[0].device
            count = torch.stack([v.to(device) for v in n_valid]).sum()
            denom = count.clamp_min(1.0)
            self._stats = {
                "prograd/projected_fraction": torch.stack([v.to(device) for v in n_projected]).sum() / denom,
                "prograd/mean_cos": torch.stack([v.to(device) for v in cos_sum]).sum() / denom,
                "prograd/n_tensors": count,
            }

    @property
    def last_stats(self) -> dict[str, float]:
        """Statistics of the last `step()`, for logging (reading them synchronises with the device).

        `prograd/projected_fraction`: share of the parameter tensors with a usable reference whose task gradient
        conflicted with it (and was projected); `prograd/mean_cos`: mean cos(G_d, G_g) over those tensors, before
        projection; `prograd/n_tensors`: how many tensors had a usable reference. Empty before the first projection.
        """
        return {k: float(v) for k, v in self._stats.items()}

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict plus a `"prograd"` entry.

        `"prograd"` holds `lambda_`, `eps` and `reference`: the pending general direction (None unless saved between
        `add_general_direction` and `step`), as `{index: tensor}` with the same parameter indexing as the wrapped
        optimizer's `"state"` (position in the concatenated `param_groups`). `.grad` is never saved (by any torch
        optimizer), so a checkpoint taken in the middle of an accumulation window cannot resume it exactly anyway.
        """
        state = dict(self.optimizer.state_dict())
        reference = None
        if self._reference is not None:
            index = {p: i for i, p in enumerate(p for group in self.param_groups for p in group["params"])}
            reference = {index[p]: r.detach().clone() for p, r in self._reference.items()}
        state["prograd"] = {"lambda_": self.lambda_, "eps": self.eps, "reference": reference}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Loads a state dict from `state_dict()`; a plain state dict of the wrapped optimizer is accepted too."""
        state_dict = dict(state_dict)
        prograd_state = state_dict.pop("prograd", None)
        self.optimizer.load_state_dict(state_dict)
        if prograd_state is None:
            return
        self.lambda_ = _check_lambda(prograd_state["lambda_"])
        self.eps = _check_eps(prograd_state["eps"])
        saved = prograd_state.get("reference")
        if saved is None:
            self._reference = None
            return
        params = [p for group in self.param_groups for p in group["params"]]
        reference = {}
        for i, r in saved.items():
            i = int(i)
            if not 0 <= i < len(params) or r.shape != params[i].shape:
                raise ValueError(f"`reference` entry {i} does not match the optimizer's parameters")
            reference[params[i]] = r.to(device=params[i].device, dtype=params[i].dtype)
        self._reference = reference


def _check_lambda(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`lambda_` must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`lambda_` must be a finite number >= 0, got {value}")
    return float(value)


def _check_eps(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`eps` must be a float, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"`eps` must be a finite number >= 0, got {value}")
    return float(value)
