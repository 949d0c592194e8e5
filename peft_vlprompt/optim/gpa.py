"""PromptSRC's Gaussian prompt aggregation (GPA, Khattak et al., ICCV'23, https://arxiv.org/abs/2307.06948).

The final prompts are a weighted average of the per-epoch snapshots, with weights from a Gaussian over the epoch
number: w_e = N(e; mean, std) for e = 1..n_epochs, normalised to sum to 1.
"""

import logging
import math
from typing import Any

import torch

logger = logging.getLogger(__name__)


class GaussianPromptAggregator:
    """Accumulates `w_e * state_dict` after each epoch and returns the weighted sum.

    Typical use: `gpa.update(epoch, get_peft_model_state_dict(model))` at the end of every epoch, then
    `set_peft_model_state_dict(model, gpa.aggregated())` after the last one. Its `state_dict` holds only tensors,
    numbers and strings, so the training checkpoints keep it as JSON + safetensors (never pickled).

    Only floating-point tensors are aggregated (others, e.g. integer buffers, are ignored); sums are kept on the CPU
    in at least float32 and returned in each tensor's original dtype.

    Args:
        n_epochs (`int`): number of training epochs N.
        mean (`float`): mean of the Gaussian, in epochs (1-based, as in PromptSRC's configs: 15 for base-to-new).
        std (`float`): standard deviation of the Gaussian, in epochs (> 0).
    """

    def __init__(self, n_epochs: int, mean: float, std: float) -> None:
        if isinstance(n_epochs, bool) or not isinstance(n_epochs, int):
            raise TypeError(f"`n_epochs` must be an int, got {type(n_epochs).__name__}")
        if n_epochs < 1:
            raise ValueError(f"`n_epochs` must be >= 1, got {n_epochs}")
        for name, value in (("mean", mean), ("std", std)):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"`{name}` must be a float, got {type(value).__name__}")
        if not math.isfinite(mean):
            raise ValueError(f"`mean` must be finite, got {mean}")
        if not (math.isfinite(std) and std > 0):
            raise ValueError(f"`std` must be a finite number > 0, got {std}")
        self.n_epochs = n_epochs
        self.mean = float(mean)
        self.std = float(std)
        self.weights = self._gaussian_weights()
        self._sums: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._updated: list[int] = []

    def _gaussian_weights(self) -> list[float]:
        # Normalised in log space: the pdf's constant cancels, and far-away means cannot underflow every weight to 0.
        logits = [-((e - self.mean) ** 2) / (2 * self.std**2) for e in range(1, self.n_epochs + 1)]
        top = max(logits)
        unnormalised = [math.exp(x - top) for x in logits]
        total = sum(unnormalised)
        return [w / total for w in unnormalised]

    @property
    def updated_epochs(self) -> list[int]:
        """The 0-based epoch indices accumulated so far."""
        return list(self._updated)

    def update(self, epoch_index: int, state_dict: dict[str, torch.Tensor]) -> None:
        """Adds `weights[epoch_index] * tensor` for every float tensor of `state_dict`.

        `epoch_index` is 0-based (0 is the first epoch, weighted by the Gaussian at epoch 1). Each epoch may be added
        once, and every update must hold the same float tensors with the same shapes.
        """
        if isinstance(epoch_index, bool) or not isinstance(epoch_index, int):
            raise TypeError(f"`epoch_index` must be an int, got {type(epoch_index).__name__}")
        if not 0 <= epoch_index < self.n_epochs:
            raise ValueError(f"`epoch_index` must be in [0, {self.n_epochs - 1}], got {epoch_index}")
        if epoch_index in self._updated:
            raise ValueError(f"`epoch_index` {epoch_index} was already added")
        tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and v.is_floating_point()}
        if not tensors:
            raise ValueError("`state_dict` holds no floating-point tensor")
        if self._sums and tensors.keys() != self._sums.keys():
            diff = sorted(tensors.keys() ^ self._sums.keys())
            raise ValueError(f"`state_dict` keys differ from the previous epochs' keys: {diff}")
        weight = self.weights[epoch_index]
        for name, tensor in tensors.items():
            value = tensor.detach().to("cpu", torch.promote_types(tensor.dtype, torch.float32)) * weight
            if name in self._sums:
                if self._sums[name].shape != value.shape:
                    raise ValueError(
                        f"`{name}` has shape {tuple(value.shape)}, expected {tuple(self._sums[name].shape)}"
                    )
                self._sums[name] += value
            else:
                self._sums[name] = value
                self._dtypes[name] = tensor.dtype
        self._updated.append(epoch_index)

    def aggregated(self, renormalize: bool = False) -> dict[str, torch.Tensor]:
        """The weighted sum, in each tensor's original dtype (on CPU).

        With `renormalize=True` it is divided by the total weight of the epochs added so far, which gives a proper
        weighted average when training stopped before `n_epochs`.
        """
        if not self._updated:
            raise ValueError("no epoch was added: call `update` first")
        scale = 1.0
        if renormalize:
            scale = 1.0 / sum(self.weights[e] for e in self._updated)
        return {k: (v * scale).to(self._dtypes[k]) for k, v in self._sums.items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "n_epochs": self.n_epochs,
            "mean": self.mean,
            "std": self.std,
            "updated_epochs": list(self._updated),
            "sums": {k: v.clone() for k, v in self._sums.items()},
            # dtypes as strings: the state stays plain data (JSON + safetensors, or `torch.load(weights_only=True)`)
            "dtypes": {k: str(v).removeprefix("torch.") for k, v in self._dtypes.items()},
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores everything, including `n_epochs`, `mean` and `std` (the weights are recomputed from them)."""
        restored = GaussianPromptAggregator(state_dict["n_epochs"], state_dict["mean"], state_dict["std"])
        dtypes = {}
        for k, name in state_dict["dtypes"].items():
            dtype = getattr(torch, name, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"`dtypes` entry `{k}` is not a torch dtype, got {name!r}")
            dtypes[k] = dtype
        if dtypes.keys() != state_dict["sums"].keys():
            raise ValueError("`dtypes` and `sums` must have the same keys")
        self.n_epochs, self.mean, self.std, self.weights = (
            restored.n_epochs,
            restored.mean,
            restored.std,
            restored.weights,
        )
        self._updated = [int(e) for e in state_dict["updated_epochs"]]
        self._sums = {k: v.detach().to("cpu").clone() for k, v in state_dict["sums"].items()}
        self._dtypes = dtypes
        logger.debug("GPA restored with %d epochs accumulated", len(self._updated))
