"""ProGrad optimizer wrapper: the projection by hand, and equivalence with the original two-backward algorithm.

Run: `python -m pytest tests/test_prograd.py -q`. The 2-process DDP check is in `test_prograd_ddp.py`.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from _prograd_toy import (
    LR,
    MOMENTUM,
    ToyPromptModel,
    accelerated_run,
    cosine_lr,
    make_batches,
    params_of,
    prograd_run,
    reference_run,
    soft_ce,
)
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from peft_vlprompt.optim import ProGrad


@pytest.fixture
def fresh_accelerate():
    # accelerate's states are process-wide singletons: start and leave each test with clean ones
    AcceleratorState._reset_state(True)
    GradientState._reset_state()
    yield
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def assert_params_close(actual, expected, tol=1e-6):
    assert actual.keys() == expected.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=tol, atol=tol, msg=name)


def _one_step(lambda_, general_coeffs, task_coeffs, general_scale=1.0):
    """p starts at 0; loss_g = general_scale * (p . general_coeffs), loss_d = p . task_coeffs; SGD lr 1."""
    p = torch.nn.Parameter(torch.zeros(len(task_coeffs)))
    opt = ProGrad(torch.optim.SGD([p], lr=1.0), lambda_=lambda_)
    opt.add_general_direction(general_scale * (p * torch.tensor(general_coeffs)).sum())
    (p * torch.tensor(task_coeffs)).sum().backward()
    opt.step()
    return p.detach(), opt


# --- the projection, worked out by hand -------------------------------------------------------------------------
# G_d = (1, 2), G_g = (3, -4): G_d.G_g = 3 - 8 = -5 < 0, |G_g| = 5, G_g_hat = (0.6, -0.8), G_d.G_g_hat = -1.
# lambda 1:   G = (1, 2) - 1 * (-1) * (0.6, -0.8) = (1.6, 1.2)   (orthogonal to G_g: 1.6*3 - 1.2*4 = 0)
# lambda 0.5: G = (1, 2) + 0.5 * (0.6, -0.8) = (1.3, 1.6).  SGD with lr 1 from 0 gives p = -G.


def test_projection_by_hand():
    p, opt = _one_step(1.0, [3.0, -4.0], [1.0, 2.0])
    torch.testing.assert_close(p, torch.tensor([-1.6, -1.2]))
    # cos(G_d, G_g) = -5 / (sqrt(5) * 5) = -1/sqrt(5)
    stats = opt.last_stats
    assert stats["prograd/projected_fraction"] == 1.0
    assert stats["prograd/mean_cos"] == pytest.approx(-(5**-0.5), rel=1e-6)
    p, _ = _one_step(0.5, [3.0, -4.0], [1.0, 2.0])
    torch.testing.assert_close(p, torch.tensor([-1.3, -1.6]))


def test_reference_scale_does_not_matter():
    # fp16 training passes `scaler.scale(loss)`; accumulation may divide it: only the direction of G_g counts.
    for scale in (4096.0, 1 / 3):
        p, _ = _one_step(1.0, [3.0, -4.0], [1.0, 2.0], general_scale=scale)
        torch.testing.assert_close(p, torch.tensor([-1.6, -1.2]))


def test_non_conflicting_gradient_is_untouched():
    # G_d = (1, 2), G_g = (-3, 4): G_d.G_g = 5 >= 0, and (2, 0) vs (0, 7): 0 (orthogonal, not conflicting).
    p, opt = _one_step(1.0, [-3.0, 4.0], [1.0, 2.0])
    assert torch.equal(p, torch.tensor([-1.0, -2.0]))
    assert opt.last_stats["prograd/projected_fraction"] == 0.0
    p, _ = _one_step(1.0, [0.0, 7.0], [2.0, 0.0])
    assert torch.equal(p, torch.tensor([-2.0, 0.0]))


def test_per_tensor_projection_and_skips():
    a = torch.nn.Parameter(torch.zeros(2))  # conflicts: projected as in the hand example
    b = torch.nn.Parameter(torch.zeros(3))  # agrees with the reference: untouched
    c = torch.nn.Parameter(torch.zeros(2))  # task gradient, no general gradient (zero reference): untouched
    d = torch.nn.Parameter(torch.ones(2))  # no gradient at all: skipped, no optimizer state
    frozen = torch.nn.Parameter(torch.ones(2), requires_grad=False)
    opt = ProGrad(torch.optim.SGD([a, b, c, d, frozen], lr=1.0, momentum=0.9))
    general = (a * torch.tensor([3.0, -4.0])).sum() + (b * torch.tensor([1.0, 1.0, 1.0])).sum()
    opt.add_general_direction(general + 0 * frozen.sum())
    task = (a * torch.tensor([1.0, 2.0])).sum() + (b * torch.tensor([-1.0, 2.0, 3.0])).sum()
    (task + (c * torch.tensor([5.0, -5.0])).sum()).backward()
    opt.step()
    torch.testing.assert_close(a.detach(), torch.tensor([-1.6, -1.2]))
    assert torch.equal(b.detach(), torch.tensor([1.0, -2.0, -3.0]))
    assert torch.equal(c.detach(), torch.tensor([-5.0, 5.0]))
    assert torch.equal(d.detach(), torch.ones(2)) and d.grad is None and "momentum_buffer" not in opt.state[d]
    stats = opt.last_stats  # a and b had a usable reference; c's is zero
    assert stats["prograd/n_tensors"] == 2.0 and stats["prograd/projected_fraction"] == 0.5


def test_non_finite_reference_is_skipped():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = ProGrad(torch.optim.SGD([p], lr=1.0))
    opt.add_general_direction((p * torch.tensor([float("inf"), -4.0])).sum())
    (p * torch.tensor([1.0, 2.0])).sum().backward()
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-1.0, -2.0]))


def test_reference_is_cleared_by_step_and_zero_grad():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = ProGrad(torch.optim.SGD([p], lr=1.0))
    opt.add_general_direction((p * torch.tensor([3.0, -4.0])).sum())
    assert opt.has_reference
    opt.zero_grad()
    assert not opt.has_reference
    # The discarded reference would have projected this conflicting gradient.
    (p * torch.tensor([1.0, 2.0])).sum().backward()
    opt.step()
    assert torch.equal(p.detach(), torch.tensor([-1.0, -2.0]))
    opt.add_general_direction((p * torch.tensor([3.0, -4.0])).sum())
    opt.step()
    assert not opt.has_reference


def test_validation_errors():
    p = torch.nn.Parameter(torch.zeros(2))
    with pytest.raises(ValueError, match=r"^`lambda_` must be a finite number >= 0, got -0.5$"):
        ProGrad(torch.optim.SGD([p], lr=1.0), lambda_=-0.5)
    with pytest.raises(TypeError, match="`optimizer` must be a torch.optim.Optimizer"):
        ProGrad([p])
    opt = ProGrad(torch.optim.SGD([p], lr=1.0))
    with pytest.raises(ValueError, match="does not require grad"):
        opt.add_general_direction(torch.tensor(1.0))


# --- whole training runs on the stand-in model --------------------------------------------------------------------


def test_lambda_zero_equals_plain_optimizer():
    batches = make_batches()
    model = ToyPromptModel()
    sgd = torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM)
    for x, y in batches:
        F.cross_entropy(model(x), y).backward()
        sgd.step()
        sgd.zero_grad()
    plain = params_of(model)
    zero, _ = prograd_run(batches, lambda_=0.0)
    assert all(torch.equal(zero[k], plain[k]) for k in plain)
    full, fractions = prograd_run(batches, lambda_=1.0)
    assert sum(fractions) > 0  # the run did project, and that changed the result
    assert not torch.equal(full["ctx"], plain["ctx"])


def test_matches_original_two_backward_algorithm():
    batches = make_batches()
    for lambda_ in (1.0, 0.8):
        expected, n_projected = reference_run(batches, lambda_=lambda_)
        actual, fractions = prograd_run(batches, lambda_=lambda_)
        assert n_projected > 0 and sum(fractions) * 2 == n_projected  # 2 learnable tensors per step
        assert_params_close(actual, expected)


def test_accelerate_accumulation_matches_single_batch(fresh_accelerate):
    batches = make_batches()
    expected, _ = reference_run(batches)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    actual, fractions = accelerated_run(accelerator, batches, micro_batches=2)
    assert sum(fractions) > 0
    assert_params_close(actual, expected)


def test_accelerate_grad_scaler_matches_fp32(fresh_accelerate):
    # accelerate creates no scaler on CPU; swap one in (before prepare, which hands it to AcceleratedOptimizer).
    batches = make_batches()
    expected, _ = reference_run(batches)
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=4096.0)
    actual, fractions = accelerated_run(accelerator, batches, micro_batches=2, scale_reference=True)
    assert sum(fractions) > 0 and accelerator.scaler.get_scale() == 4096.0
    assert_params_close(actual, expected)


def test_grad_scaler_skipped_step_discards_reference():
    """A step the scaler skips (inf) must not leave its reference behind for the next step."""
    batches = make_batches()
    expected, _ = reference_run(batches)
    model = ToyPromptModel()
    prograd = ProGrad(torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM))
    scaler = torch.amp.GradScaler("cpu", init_scale=4096.0)
    bad_x, bad_y = make_batches(1, seed=7)[0]
    for step, (x, y) in enumerate(batches):
        if step == 2:  # an overflowing iteration on other data: skipped by the scaler
            logits = model(bad_x)
            prograd.add_general_direction(scaler.scale(soft_ce(logits, model.teacher(bad_x))))
            scaler.scale(F.cross_entropy(logits, bad_y)).backward()
            model.ctx.grad[0, 0] = float("inf")
            scaler.step(prograd)
            scaler.update()
            prograd.zero_grad()
        logits = model(x)
        prograd.add_general_direction(scaler.scale(soft_ce(logits, model.teacher(x))))
        scaler.scale(F.cross_entropy(logits, y)).backward()
        scaler.step(prograd)
        scaler.update()
        prograd.zero_grad()
    assert scaler.get_scale() == 2048.0  # one step was skipped
    assert_params_close(params_of(model), expected)


def test_state_dict_round_trip_resumes_exactly():
    batches = make_batches()
    uninterrupted, _ = prograd_run(batches)

    def train(model, opt, part):
        for x, y in part:
            logits = model(x)
            opt.add_general_direction(soft_ce(logits, model.teacher(x)))
            F.cross_entropy(logits, y).backward()
            opt.step()
            opt.zero_grad()

    model = ToyPromptModel()
    opt = ProGrad(torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM))
    train(model, opt, batches[:2])
    saved_model, saved_opt = model.state_dict(), opt.state_dict()
    saved_model = {k: v.clone() for k, v in saved_model.items()}

    resumed = ToyPromptModel(seed=99)  # different initial values: everything must come from the state dicts
    resumed.load_state_dict(saved_model)
    opt2 = ProGrad(torch.optim.SGD([resumed.ctx, resumed.shift], lr=LR, momentum=MOMENTUM), lambda_=0.3)
    opt2.load_state_dict(saved_opt)
    assert opt2.lambda_ == 1.0
    train(resumed, opt2, batches[2:])
    assert all(torch.equal(params_of(resumed)[k], uninterrupted[k]) for k in uninterrupted)


def test_state_dict_keeps_a_pending_reference():
    p = torch.nn.Parameter(torch.zeros(2))
    opt = ProGrad(torch.optim.SGD([p], lr=1.0))
    opt.add_general_direction((p * torch.tensor([3.0, -4.0])).sum())
    state = opt.state_dict()
    assert torch.equal(state["prograd"]["reference"][0], torch.tensor([3.0, -4.0]))
    q = torch.nn.Parameter(torch.zeros(2))
    opt2 = ProGrad(torch.optim.SGD([q], lr=1.0))
    opt2.load_state_dict(state)
    (q * torch.tensor([1.0, 2.0])).sum().backward()
    opt2.step()
    torch.testing.assert_close(q.detach(), torch.tensor([-1.6, -1.2]))
    # A plain state dict of the wrapped optimizer loads too.
    opt2.load_state_dict(torch.optim.SGD([q], lr=0.1).state_dict())
    assert opt2.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("kind", ["lambda", "cosine"])
def test_lr_schedulers(kind):
    batches = make_batches()
    if kind == "lambda":
        lrs = [LR * 0.5**k for k in range(len(batches))]
    else:
        lrs = [cosine_lr(k, LR, t_max=3, eta_min=0.01) for k in range(len(batches))]
    expected, _ = reference_run(batches, lrs=lrs)
    model = ToyPromptModel()
    opt = ProGrad(torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM))
    if kind == "lambda":
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 0.5**k)
    else:
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3, eta_min=0.01)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for k, (x, y) in enumerate(batches):
            assert opt.param_groups[0]["lr"] == pytest.approx(lrs[k], rel=1e-12)
            logits = model(x)
            opt.add_general_direction(soft_ce(logits, model.teacher(x)))
            F.cross_entropy(logits, y).backward()
            opt.step()
            opt.zero_grad()
            sched.step()
    assert not [w for w in caught if "lr_scheduler" in str(w.message)], [str(w.message) for w in caught]
    assert_params_close(params_of(model), expected)


def test_accelerate_prepare_scheduler_and_save_state(tmp_path, fresh_accelerate):
    batches = make_batches(6)
    lrs = [LR * 0.7**k for k in range(len(batches))]
    expected, _ = reference_run(batches, lrs=lrs)
    accelerator = Accelerator(cpu=True)
    model = ToyPromptModel()
    prograd = ProGrad(torch.optim.SGD([model.ctx, model.shift], lr=LR, momentum=MOMENTUM))
    sched = torch.optim.lr_scheduler.LambdaLR(prograd, lambda k: 0.7**k)
    model, optimizer, sched = accelerator.prepare(model, prograd, sched)

    def train(part):
        for x, y in part:
            with accelerator.accumulate(model):
                logits = model(x)
                prograd.add_general_direction(soft_ce(logits, model.teacher(x)))
                accelerator.backward(F.cross_entropy(logits, y))
                optimizer.step()
                sched.step()
                optimizer.zero_grad()

    train(batches[:3])
    accelerator.save_state(str(tmp_path / "ckpt"))
    train(batches[3:])
    uninterrupted = params_of(model)
    assert_params_close(uninterrupted, expected)
    accelerator.load_state(str(tmp_path / "ckpt"))  # back to step 3: params, momentum, lr schedule
    assert optimizer.param_groups[0]["lr"] == pytest.approx(lrs[3], rel=1e-12)
    train(batches[3:])
    assert all(torch.equal(params_of(model)[k], uninterrupted[k]) for k in uninterrupted)
