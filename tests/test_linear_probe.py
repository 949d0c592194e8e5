"""Linear probes (`--method linear_probe` / `linear_probe_text`): the L-BFGS fit is the minimiser of the penalised
cross-entropy (checked with the gradient written out by hand and with plain gradient descent), the L2 strength is
chosen on the validation split only, and the loop reports base accuracy only where new classes would be needed."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from peft_vlprompt.baselines.linear_probe import accuracy, fit_probe, select_probe
from peft_vlprompt.training import main
from tests.test_training_fixtures import base_args, save_tiny_model


def toy_features(n=36, d=5, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(c, d, generator=g, dtype=torch.float64)
    y = torch.arange(n) % c
    x = F.normalize(centers[y] + 0.8 * torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)
    return x, y


def hand_gradient(w, b, x, y, l2, anchor):
    """d/dW, d/db of mean CE + l2/2 ||W - anchor||^2, written out: P - Y gives the CE gradient of softmax."""
    p = torch.softmax(x @ w.T + b, dim=-1)
    residual = p - F.one_hot(y, w.shape[0]).double()
    return residual.T @ x / len(y) + l2 * (w - anchor), residual.mean(0)


@pytest.mark.parametrize("anchored", [False, True])
def test_lbfgs_fit_is_the_stationary_point(anchored):
    x, y = toy_features()
    anchor = torch.randn(3, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64) if anchored else None
    probe = fit_probe(x, y, 3, l2=0.01, anchor=anchor)
    gw, gb = hand_gradient(probe.weight, probe.bias, x, y, 0.01, torch.zeros(3, 5) if anchor is None else anchor)
    assert gw.abs().max() < 1e-7 and gb.abs().max() < 1e-7


def test_lbfgs_fit_equals_hand_written_gradient_descent():
    x, y = toy_features(seed=1)
    w, b = torch.zeros(3, 5, dtype=torch.float64), torch.zeros(3, dtype=torch.float64)
    for _ in range(5000):  # l2 = 0.5: well conditioned, plain gradient descent converges (the bias more slowly)
        gw, gb = hand_gradient(w, b, x, y, 0.5, torch.zeros(3, 5))
        w, b = w - 0.5 * gw, b - 0.5 * gb
    probe = fit_probe(x, y, 3, l2=0.5)
    torch.testing.assert_close(probe.weight, w, atol=1e-6, rtol=0)
    torch.testing.assert_close(probe.bias, b, atol=1e-6, rtol=0)


def test_strong_penalty_gives_the_anchor_back():
    x, y = toy_features()
    anchor = 10 * torch.randn(3, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    probe = fit_probe(x, y, 3, l2=1e6, anchor=anchor)
    torch.testing.assert_close(probe.weight, anchor, atol=1e-4, rtol=0)


def test_l2_is_chosen_on_validation_only_ties_to_the_strongest():
    x, y = toy_features(n=60, seed=4)
    x_val, y_val = toy_features(n=30, seed=5)
    grid = (1e-4, 1e-2, 1.0, 100.0)
    best, scores = select_probe(x[:30], y[:30], x_val, y_val, 3, grid=grid)
    for l2 in grid:  # each score is the validation accuracy of the probe fitted with that l2, counted here
        pred = fit_probe(x[:30], y[:30], 3, l2).logits(x_val).argmax(-1)
        assert scores[l2] == pytest.approx(100.0 * (pred == y_val).double().mean().item())
    top = max(scores.values())
    assert best.l2 == max(l2 for l2 in grid if scores[l2] == top)
    assert accuracy(best, x_val, y_val) == top
    assert len(set(scores.values())) > 1  # the grid matters on this data


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("probe") / "model")


@pytest.mark.parametrize("method", ["linear_probe", "linear_probe_text"])
def test_loop_probe_reports_base_accuracy_only(model_dir, tmp_path, method):
    torch.set_num_threads(1)
    out = tmp_path / method
    argv = base_args(model_dir, out, method)
    argv = argv[: argv.index("--num_epochs")] + ["--eval_batch_size", "16"]  # no training-loop flags
    results = main(argv)
    assert results["method"] == method and "base_accuracy" in results
    assert "new_accuracy" not in results and "hm" not in results and "new" in results["not_evaluated"]
    assert set(results["zero_shot"]) == {"base_accuracy", "new_accuracy", "hm"}  # zero-shot CLIP has every class
    probe = results["probe"]
    assert probe["selected_on"] == "validation" and probe["validation_accuracy"] == max(
        probe["validation_by_l2"].values()
    )
    assert json.loads((out / "all_results.json").read_text())["probe"]["l2"] == probe["l2"]
    tensors = load_file(out / "probe.safetensors")
    assert tensors["weight"].shape[0] == 2 and torch.isfinite(tensors["weight"]).all()  # the 2 base classes


@pytest.mark.parametrize("extra", [[], ["--momentum", "0.5", "--shots", "-1"]])
def test_training_flags_are_refused_for_a_probe(model_dir, tmp_path, extra):
    argv = base_args(model_dir, tmp_path / "x", "linear_probe") + extra
    with pytest.raises(ValueError, match="`num_epochs`.*would be ignored.*L-BFGS"):
        main(argv)
