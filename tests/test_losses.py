"""Method objectives (ProGrad, KgCoOp, PromptSRC) and PromptSRC's Gaussian prompt aggregation, each against a
hand-written re-statement with explicit loops.

Run: `python -m pytest tests/test_losses.py -q`.
"""

import math

import pytest
import torch

from peft_vlprompt.losses import kgcoop_loss, prograd_general_loss, promptsrc_losses, teacher_logits
from peft_vlprompt.optim import GaussianPromptAggregator


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _softmax(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    return [v / sum(e) for v in e]


def _unit(row):
    n = math.sqrt(sum(v * v for v in row))
    return [v / n for v in row]


# --- ProGrad -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_prograd_general_loss_by_hand(T):
    student, teacher = _rand(4, 5, seed=1), 3 * _rand(4, 5, seed=2)
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p = _softmax([v / T for v in t_row])
        q = _softmax([v / T for v in s_row])
        total += -sum(pc * math.log(qc) for pc, qc in zip(p, q))
    expected = total / 4 * T * T
    out = prograd_general_loss(student, teacher, T=T)
    assert list(out) == ["prograd_kl"]
    assert out["prograd_kl"].item() == pytest.approx(expected, rel=1e-5)


def test_prograd_general_loss_gradient_is_kl_gradient_and_teacher_is_detached():
    student = _rand(3, 4, seed=3).requires_grad_()
    teacher = _rand(3, 4, seed=4).requires_grad_()
    prograd_general_loss(student, teacher)["prograd_kl"].backward()
    assert teacher.grad is None
    # d/ds_c of mean_b KL(p || softmax(s)) = (softmax(s)_c - p_c) / batch
    expected = [
        [(qc - pc) / 3 for pc, qc in zip(_softmax(t_row), _softmax(s_row))]
        for s_row, t_row in zip(student.tolist(), teacher.tolist())
    ]
    torch.testing.assert_close(student.grad, torch.tensor(expected), rtol=1e-5, atol=1e-7)


def test_teacher_logits_by_hand():
    image, text = _rand(2, 3, seed=5), _rand(4, 3, seed=6)
    log_scale = torch.tensor(math.log(100.0))
    expected = [
        [100.0 * sum(a * b for a, b in zip(_unit(i_row), _unit(t_row))) for t_row in text.tolist()]
        for i_row in image.tolist()
    ]
    out = teacher_logits(image.requires_grad_(), text, log_scale)
    assert not out.requires_grad
    torch.testing.assert_close(out, torch.tensor(expected), rtol=1e-5, atol=1e-5)


def test_prograd_validation():
    with pytest.raises(ValueError, match=r"^`T` must be a number > 0, got 0$"):
        prograd_general_loss(torch.zeros(2, 3), torch.zeros(2, 3), T=0)
    with pytest.raises(ValueError, match="must both be"):
        prograd_general_loss(torch.zeros(2, 3), torch.zeros(2, 4))


# --- KgCoOp ------------------------------------------------------------------------------------------------------


def test_kgcoop_by_hand():
    text, clip_text = _rand(5, 8, seed=7).requires_grad_(), _rand(5, 8, seed=8).requires_grad_()
    cosines = [sum(a * b for a, b in zip(_unit(t), _unit(c))) for t, c in zip(text.tolist(), clip_text.tolist())]
    expected = 8.0 * (1 - sum(cosines) / 5)
    out = kgcoop_loss(text, clip_text)
    assert list(out) == ["kgcoop"]
    assert out["kgcoop"].item() == pytest.approx(expected, rel=1e-5)
    assert kgcoop_loss(text, clip_text, weight=2.0)["kgcoop"].item() == pytest.approx(expected / 4, rel=1e-5)
    out["kgcoop"].backward()
    assert clip_text.grad is None and text.grad is not None
    with pytest.raises(ValueError, match=r"^`weight` must be a number >= 0, got -1.0$"):
        kgcoop_loss(text, clip_text, weight=-1.0)


# --- PromptSRC ---------------------------------------------------------------------------------------------------


def test_promptsrc_by_hand():
    text, zs_text = _rand(3, 6, seed=9), _rand(3, 6, seed=10)
    image, zs_image = _rand(4, 6, seed=11), _rand(4, 6, seed=12)
    logits, zs_logits = 5 * _rand(4, 3, seed=13), 5 * _rand(4, 3, seed=14)

    def l1_of_unit_rows(a, b):
        diffs = [abs(x - y) for ra, rb in zip(a.tolist(), b.tolist()) for x, y in zip(_unit(ra), _unit(rb))]
        return sum(diffs) / len(diffs)

    kl = 0.0  # KL(p_zs || p), summed over batch and classes
    for row, zs_row in zip(logits.tolist(), zs_logits.tolist()):
        p, p_zs = _softmax(row), _softmax(zs_row)
        kl += sum(z * (math.log(z) - math.log(q)) for q, z in zip(p, p_zs))
    out = promptsrc_losses(text, zs_text, image, zs_image, logits, zs_logits)
    assert sorted(out) == ["src_image", "src_logits", "src_text"]
    assert out["src_text"].item() == pytest.approx(25.0 * l1_of_unit_rows(text, zs_text), rel=1e-5)
    assert out["src_image"].item() == pytest.approx(10.0 * l1_of_unit_rows(image, zs_image), rel=1e-5)
    assert out["src_logits"].item() == pytest.approx(kl / 12, rel=1e-5)
    out = promptsrc_losses(text, zs_text, image, zs_image, logits, zs_logits, text_weight=1.0, image_weight=0.0)
    assert out["src_text"].item() == pytest.approx(l1_of_unit_rows(text, zs_text), rel=1e-5)
    assert out["src_image"].item() == 0.0


def test_promptsrc_teacher_side_is_detached():
    tensors = [_rand(3, 6, seed=s).requires_grad_() for s in range(4)] + [
        _rand(4, 3, seed=s).requires_grad_() for s in (4, 5)
    ]
    sum(promptsrc_losses(*tensors).values()).backward()
    assert [t.grad is not None for t in tensors] == [True, False, True, False, True, False]


# --- Gaussian prompt aggregation ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_epochs,mean,std", [(5, 3.0, 1.0), (20, 15.0, 1.0), (50, 30.0, 30.0), (20, 6.0, 10.0)])
def test_gpa_weights_are_normalised_gaussian(n_epochs, mean, std):
    pdf = [
        math.exp(-((e - mean) ** 2) / (2 * std**2)) / (std * math.sqrt(2 * math.pi)) for e in range(1, n_epochs + 1)
    ]
    expected = [v / sum(pdf) for v in pdf]
    gpa = GaussianPromptAggregator(n_epochs, mean, std)
    assert gpa.weights == pytest.approx(expected, rel=1e-12, abs=1e-300)
    assert sum(gpa.weights) == pytest.approx(1.0, rel=1e-12)


def test_gpa_weights_far_mean_do_not_underflow():
    gpa = GaussianPromptAggregator(3, 100.0, 0.5)  # every pdf value underflows; the last epoch dominates
    assert gpa.weights == pytest.approx([0.0, 0.0, 1.0], abs=1e-12)


def _epoch_state(e):
    return {
        "ctx": torch.full((2, 3), float(e + 1)) + torch.arange(6.0).view(2, 3),
        "half": torch.tensor([0.5 * (e + 1)], dtype=torch.bfloat16),
        "ids": torch.arange(3),  # integer buffers are ignored
    }


def test_gpa_aggregates_weighted_sum_and_resumes(tmp_path):
    gpa = GaussianPromptAggregator(4, 2.0, 1.0)
    w = gpa.weights
    for e in range(4):
        gpa.update(e, _epoch_state(e))
    out = gpa.aggregated()
    assert sorted(out) == ["ctx", "half"] and out["half"].dtype == torch.bfloat16
    expected_ctx = [[sum(w[e] * (e + 1 + i * 3 + j) for e in range(4)) for j in range(3)] for i in range(2)]
    torch.testing.assert_close(out["ctx"], torch.tensor(expected_ctx), rtol=1e-6, atol=1e-6)
    assert out["half"].item() == pytest.approx(sum(w[e] * 0.5 * (e + 1) for e in range(4)), rel=1e-2)

    # Checkpoint after two epochs, resume in a fresh object: same result as uninterrupted.
    first = GaussianPromptAggregator(4, 2.0, 1.0)
    for e in range(2):
        first.update(e, _epoch_state(e))
    torch.save(first.state_dict(), tmp_path / "gpa.pt")
    resumed = GaussianPromptAggregator(9, 0.0, 3.0)
    resumed.load_state_dict(torch.load(tmp_path / "gpa.pt", weights_only=True))
    assert resumed.weights == w and resumed.updated_epochs == [0, 1]
    for e in range(2, 4):
        resumed.update(e, _epoch_state(e))
    assert all(torch.equal(resumed.aggregated()[k], out[k]) for k in out)

    # Stopped early: renormalise by the weights seen.
    partial = first.aggregated(renormalize=True)["ctx"]
    torch.testing.assert_close(
        partial, (w[0] * (1 + torch.arange(6.0)) + w[1] * (2 + torch.arange(6.0))).view(2, 3) / (w[0] + w[1])
    )


def test_gpa_validation():
    with pytest.raises(ValueError, match=r"^`std` must be a finite number > 0, got 0.0$"):
        GaussianPromptAggregator(5, 3.0, 0.0)
    with pytest.raises(ValueError, match=r"^`n_epochs` must be >= 1, got 0$"):
        GaussianPromptAggregator(0, 3.0, 1.0)
    gpa = GaussianPromptAggregator(3, 2.0, 1.0)
    with pytest.raises(ValueError, match="no epoch was added"):
        gpa.aggregated()
    with pytest.raises(ValueError, match=r"^`epoch_index` must be in \[0, 2\], got 3$"):
        gpa.update(3, _epoch_state(0))
    gpa.update(0, _epoch_state(0))
    with pytest.raises(ValueError, match="already added"):
        gpa.update(0, _epoch_state(0))
    with pytest.raises(ValueError, match=r"keys differ.*\['extra'\]"):
        gpa.update(1, {**_epoch_state(1), "extra": torch.zeros(1)})
