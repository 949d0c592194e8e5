"""Precision: a bf16 (or fp16) frozen model with fp32 learned tensors trains every method; fp16 + GradScaler gives
ProGrad's fp32 step (see `peft_vlprompt.precision` for the documented tolerances)."""

import copy

import pytest
import torch
from peft import get_peft_model

from peft_vlprompt import (
    CoCoOpConfig,
    CoOpConfig,
    DeepPromptConfig,
    DPLSearchConfig,
    KgCoOpConfig,
    ProGrad,
    ProGradCoOpConfig,
    PromptClassifier,
    RestoreAdapterConfig,
    ivlp_preset,
    maple_preset,
    promptsrc_preset,
)
from peft_vlprompt.precision import cast_frozen, frozen_dtype, learnable_dtypes
from peft_vlprompt.training import TrainingModule
from peft_vlprompt.training.objectives import (
    KgCoOpObjective,
    Objective,
    ProGradObjective,
    PromptSRCObjective,
    RestoreObjective,
)
from tests.tiny import pixels, tiny_clip, tokenizer

LAYERS = 3
CLASSES = ["cat", "sea lion", "golden retriever"]
METHODS = {  # name -> (config factory, objective factory)
    "coop": (lambda: CoOpConfig(n_ctx=4), Objective),
    "coop_csc": (lambda: CoOpConfig(n_ctx=4, class_specific=True, n_classes=len(CLASSES)), Objective),
    "cocoop": (lambda: CoCoOpConfig(n_ctx=4), Objective),
    "kgcoop": (lambda: KgCoOpConfig(ctx_init="a photo of a"), KgCoOpObjective),
    "prograd": (lambda: ProGradCoOpConfig(n_ctx=4), ProGradObjective),
    "ivlp": (lambda: ivlp_preset(LAYERS, depth=LAYERS), Objective),
    "maple": (lambda: maple_preset(LAYERS, depth=2), Objective),
    "promptsrc": (lambda: promptsrc_preset(LAYERS, depth=LAYERS), lambda: PromptSRCObjective(templates=["a {}."])),
    "restore": (lambda: RestoreAdapterConfig(text_lengths=[2, 3, 0], vision_lengths=[2, 3, 0]), RestoreObjective),
    "dpl_prefix": (lambda: DeepPromptConfig(mode="prefix", text_lengths=[2, 1, 3], vision_lengths=[1, 0, 0]), Objective),
    "dpl_search": (lambda: DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]), Objective),
}  # fmt: skip


def build(method: str, seed: int = 0):
    config, _ = METHODS[method]
    model = get_peft_model(tiny_clip(seed, attn="sdpa", text_layers=LAYERS, vision_layers=LAYERS), config())
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for _, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def training_step(model, method: str, lr: float = 0.1, scaler=None, pix=None):
    """One step of the method's objective (ProGrad wrapped for prograd); returns {name: param after}."""
    clf = PromptClassifier(model, tokenizer(), CLASSES).eval()
    objective = METHODS[method][1]()
    objective.prepare(clf, vision_prompted=method in ("ivlp", "maple", "promptsrc", "restore", "dpl_prefix"))
    module = TrainingModule(clf, objective).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=lr)
    if method == "prograd":
        optimizer = ProGrad(optimizer)
    dtype = next(p for p in model.parameters() if not p.requires_grad).dtype
    pix = (pixels(2, seed=3) if pix is None else pix).to(dtype)
    terms = module(labels=torch.tensor([0, 2]), pixel_values=pix)["terms"]
    loss = sum(v for k, v in terms.items() if k not in objective.direction_terms)
    direction = terms.get("prograd_kl")
    if scaler is not None:
        loss, direction = scaler.scale(loss), None if direction is None else scaler.scale(direction)
    if direction is not None:
        optimizer.add_general_direction(direction)
    loss.backward()
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", sorted(METHODS))
def test_bf16_frozen_model_trains_every_method_with_fp32_learned_tensors(method):
    model = cast_frozen(build(method), torch.bfloat16)
    frozen = {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen == {torch.bfloat16} and learnable_dtypes(model) == {torch.float32}
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    after = training_step(model, method)
    assert learnable_dtypes(model) == {torch.float32}
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(before[n], after[n]) for n in before)  # the step reached the learned tensors


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "dpl_prefix"])
def test_bf16_logits_agree_with_fp32(method):
    fp32 = build(method)
    bf16 = cast_frozen(copy.deepcopy(fp32), torch.bfloat16)
    pix = pixels(2, seed=4)
    with torch.no_grad():
        want = PromptClassifier(fp32, tokenizer(), CLASSES).eval()(pix)
        got = PromptClassifier(bf16, tokenizer(), CLASSES).eval()(pix.bfloat16())
    assert got.dtype == torch.bfloat16
    # the documented tolerance (peft_vlprompt.precision): cosines within 0.02, i.e. logits within 0.02 x scale
    scale = fp32.base_model.model.logit_scale.exp().item()
    assert (got.float() - want).abs().max() <= 0.02 * scale
    assert (got.float() - want).abs().max() > 0  # really computed in bf16


def test_gradscaler_step_equals_the_unscaled_prograd_step():
    # the scaler's logic alone, in fp32: a scaled task loss and a scaled general direction give the same step,
    # because GradScaler unscales `.grad` through ProGrad's param_groups before the projection
    plain = build("prograd", seed=1)
    scaled = copy.deepcopy(plain)
    want = training_step(plain, "prograd", lr=0.5)
    got = training_step(scaled, "prograd", lr=0.5, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    before = {n: p.detach() for n, p in build("prograd", seed=1).named_parameters() if p.requires_grad}
    for name in want:
        step = want[name] - before[name]
        assert step.abs().max() > 0
        assert (got[name] - want[name]).abs().max() <= 1e-5 * step.abs().max(), name


def test_fp16_frozen_model_with_gradscaler_matches_the_fp32_prograd_step():
    # fp16 frozen model (CPU fp16 math), fp32 context: the update matches fp32 within 2% of its norm (fp16 keeps
    # 11 mantissa bits; measured 0.5% on this problem)
    fp32 = build("prograd", seed=2)
    before = {n: p.detach().clone() for n, p in fp32.named_parameters() if p.requires_grad}
    fp16 = cast_frozen(copy.deepcopy(fp32), torch.float16)
    want = training_step(fp32, "prograd", lr=0.5)
    got = training_step(fp16, "prograd", lr=0.5, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**12))
    for name in want:
        step = want[name] - before[name]
        assert (got[name] - want[name]).norm() <= 0.02 * step.norm(), name


def test_dtype_names():
    assert frozen_dtype("bfloat16") is torch.bfloat16
    with pytest.raises(ValueError, match=r"`dtype` must be one of .*'float16'.*got 'half'"):
        frozen_dtype("half")
    with pytest.raises(ValueError, match="`dtype` must be one of"):
        cast_frozen(tiny_clip(0), torch.int8)


# -- the training CLI's knobs ------------------------------------------------------------------------------------
def test_cli_model_name_or_path_is_an_alias_of_model():
    from peft_vlprompt.training import parse_args

    assert parse_args(["--model_name_or_path", "openai/clip-vit-base-patch16"]).model == "openai/clip-vit-base-patch16"
    assert parse_args(["--model_name_or_path", "a/b", "--model", "a/b"]).model == "a/b"
    with pytest.raises(ValueError, match="alias of `model`.*'a/b'.*'c/d'"):
        parse_args(["--model", "a/b", "--model_name_or_path", "c/d"])


def test_cli_refuses_fp16_where_it_cannot_run():
    from peft_vlprompt.training import parse_args

    with pytest.raises(ValueError, match=r"`dtype`='float16' needs loss scaling.*--mixed_precision fp16"):
        parse_args(["--dtype", "float16"])
    with pytest.raises(ValueError, match=r"`mixed_precision`='fp16' needs a GPU, but `cpu` is set"):
        parse_args(["--mixed_precision", "fp16", "--cpu"])
    args = parse_args(["--dtype", "bfloat16", "--attn_implementation", "eager", "--gradient_checkpointing",
                       "--torch_compile"])  # fmt: skip
    assert (args.dtype, args.attn_implementation, args.gradient_checkpointing, args.torch_compile) == (
        "bfloat16", "eager", True, True)  # fmt: skip


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from tests.test_training_fixtures import save_tiny_model

    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_training_refuses_fp16_without_a_gpu_before_loading(model_dir, tmp_path, monkeypatch):
    from peft_vlprompt.training import loop, main
    from tests.test_training_fixtures import base_args

    monkeypatch.setattr(loop, "load_clip", lambda *a, **k: pytest.fail("loaded a model before refusing"))
    with pytest.raises(ValueError, match=r"`mixed_precision`='fp16' needs a GPU \(torch.cuda.is_available"):
        main(base_args(model_dir, tmp_path / "run", "coop", "--mixed_precision", "fp16"))
    with pytest.raises(ValueError, match="`attn_implementation`='flash_attention_2' needs a GPU"):
        main(base_args(model_dir, tmp_path / "run", "coop", "--attn_implementation", "flash_attention_2"))


def test_training_with_bf16_frozen_model_and_the_knobs(model_dir, tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from peft_vlprompt.training import loop, main
    from tests.test_training_fixtures import base_args

    seen = {}
    real_classifier = loop.PromptClassifier

    def spy(model, *args, **kwargs):
        clip = model.base_model.model
        seen["frozen"] = {p.dtype for p in model.parameters() if not p.requires_grad}
        seen["learned"] = learnable_dtypes(model)
        seen["attn"] = clip.config.text_config._attn_implementation
        seen["checkpointing"] = clip.is_activation_checkpointing
        return real_classifier(model, *args, **kwargs)

    monkeypatch.setattr(loop, "PromptClassifier", spy)
    monkeypatch.setattr(loop.TrainingModule, "compile", lambda self: seen.setdefault("compiled", True), raising=False)
    out = tmp_path / "run"
    argv = ["--dtype", "bfloat16", "--attn_implementation", "eager", "--gradient_checkpointing", "--torch_compile",
            "--max_train_steps", "2", "--no_eval_zero_shot"]  # fmt: skip
    results = main(base_args(model_dir, out, "prograd", *argv))
    assert results["global_step"] == 2
    assert seen == {"frozen": {torch.bfloat16}, "learned": {torch.float32}, "attn": "eager", "checkpointing": True,
                    "compiled": True}  # fmt: skip
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert {v.dtype for v in saved.values()} == {torch.float32}
