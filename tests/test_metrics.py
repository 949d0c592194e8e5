"""In-package metrics against values worked out by hand."""

import math

import pytest
import torch

from peft_vlprompt.training import accuracy, harmonic_mean, mean_per_class_accuracy, per_class_accuracy


def test_accuracy_counts_matches():
    # 3 of 4 right
    assert accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 75.0
    assert accuracy(torch.tensor([1, 1]), torch.tensor([0, 0])) == 0.0


def test_per_class_accuracy_and_its_mean():
    preds = [0, 0, 1, 1, 1, 2]
    labels = [0, 1, 1, 1, 2, 2]
    # class 0: 1/1; class 1: 2/3 (one predicted 0); class 2: 1/2; class 3: no sample
    got = per_class_accuracy(preds, labels, num_classes=4)
    assert got[:3] == pytest.approx([100.0, 200.0 / 3, 50.0])
    assert math.isnan(got[3])
    assert mean_per_class_accuracy(preds, labels, num_classes=4) == pytest.approx((100 + 200 / 3 + 50) / 3)


def test_harmonic_mean_of_base_and_new():
    assert harmonic_mean(80.0, 60.0) == pytest.approx(2 * 80 * 60 / 140)
    assert harmonic_mean(82.69, 63.22) == pytest.approx(71.66, abs=0.01)  # CoOp's base-to-new average row
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 50.0) == 50.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match="same length"):
        accuracy([0, 1], [0])
    with pytest.raises(ValueError, match="empty"):
        accuracy([], [])
    with pytest.raises(TypeError, match="integer class indices"):
        accuracy(torch.tensor([0.0]), torch.tensor([0]))
    with pytest.raises(ValueError, match=r"`base` must be a finite accuracy >= 0, got -1.0"):
        harmonic_mean(-1.0, 3.0)
    with pytest.raises(ValueError, match=r"`labels` must lie in \[0, 1\]"):
        per_class_accuracy([0, 1, 2], [0, 1, 2], num_classes=2)
