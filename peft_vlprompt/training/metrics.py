"""Classification metrics computed in-package (`evaluate.load` needs the Hub, see DESIGN decision 9).

Accuracies are percentages, as the papers report them.
"""

import math
from collections.abc import Sequence

import torch


def _as_long_tensor(values: torch.Tensor | Sequence[int], name: str) -> torch.Tensor:
    tensor = torch.as_tensor(values)
    if tensor.dim() != 1:
        raise ValueError(f"`{name}` must be 1-D, got shape {tuple(tensor.shape)}")
    if tensor.numel() and (tensor.is_floating_point() or tensor.is_complex()):
        raise TypeError(f"`{name}` must hold integer class indices, got dtype {tensor.dtype}")
    return tensor.long().cpu()


def _checked(predictions, labels) -> tuple[torch.Tensor, torch.Tensor]:
    predictions = _as_long_tensor(predictions, "predictions")
    labels = _as_long_tensor(labels, "labels")
    if predictions.shape != labels.shape:
        raise ValueError(
            f"`predictions` and `labels` must have the same length, got {predictions.numel()} and {labels.numel()}"
        )
    if labels.numel() == 0:
        raise ValueError("`labels` is empty: there is nothing to score")
    return predictions, labels


def accuracy(predictions: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int]) -> float:
    """Top-1 accuracy in percent: 100 * mean(prediction == label)."""
    predictions, labels = _checked(predictions, labels)
    return 100.0 * (predictions == labels).sum().item() / labels.numel()


def per_class_accuracy(
    predictions: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int], num_classes: int | None = None
) -> list[float]:
    """Accuracy in percent of each class `c` over the samples whose label is `c` (NaN for a class with no sample).

    `num_classes` defaults to `max(labels) + 1`.
    """
    predictions, labels = _checked(predictions, labels)
    if num_classes is None:
        num_classes = int(labels.max().item()) + 1
    if num_classes < 1:
        raise ValueError(f"`num_classes` must be >= 1, got {num_classes}")
    if int(labels.max().item()) >= num_classes or int(labels.min().item()) < 0:
        raise ValueError(f"`labels` must lie in [0, {num_classes - 1}], got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")  # fmt: skip
    totals = torch.bincount(labels, minlength=num_classes)
    correct = torch.bincount(labels[predictions == labels], minlength=num_classes)
    return [100.0 * c / t if t > 0 else math.nan for c, t in zip(correct.tolist(), totals.tolist())]


def mean_per_class_accuracy(
    predictions: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int], num_classes: int | None = None
) -> float:
    """Mean of `per_class_accuracy` over the classes that have samples."""
    values = [v for v in per_class_accuracy(predictions, labels, num_classes) if not math.isnan(v)]
    return sum(values) / len(values)


def harmonic_mean(base: float, new: float) -> float:
    """Base-to-new harmonic mean HM = 2·B·N / (B + N); 0 when both accuracies are 0."""
    for name, value in (("base", base), ("new", new)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError(f"`{name}` must be a finite accuracy >= 0, got {value!r}")
    if base + new == 0:
        return 0.0
    return 2.0 * base * new / (base + new)
