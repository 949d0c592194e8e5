"""CLIP-LoRA (`--method clip_lora`): the preset is the published recipe, the adapter is a plain peft LoRA adapter on
q/k/v of every layer of both towers, `PromptClassifier` uses the template prompts through the LoRA-modified towers,
and the loop trains it with AdamW and a per-iteration cosine. References are written out here, not read from the
library."""

import json
import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model

from peft_vlprompt import PromptClassifier
from peft_vlprompt.baselines import clip_lora_config
from peft_vlprompt.baselines.training import cosine_lr
from peft_vlprompt.training import main
from peft_vlprompt.training.presets import PresetContext, get_preset
from tests.test_training_fixtures import base_args, save_tiny_model
from tests.tiny import PROJ_DIM, TEXT_WIDTH, VISION_WIDTH, pixels, tiny_clip, tokenizer

CLASSES = ["cat", "dog", "red car"]


def lora_model(seed: int = 3):
    """A tiny CLIP with CLIP-LoRA, its B matrices set non-zero (a fresh adapter is the identity)."""
    model = get_peft_model(tiny_clip(), clip_lora_config(tiny_clip()))
    torch.manual_seed(seed)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.5)
    return model.eval()


def test_preset_is_the_published_recipe():
    # Zanella & Ben Ayed 2024 / CLIP-LoRA run_utils.py: r 2, alpha 1, dropout 0.25, q/k/v, both encoders, all layers;
    # AdamW lr 2e-4, wd 1e-2, cosine to 1e-6, batch 32, 500 x shots iterations, "a photo of a {}."
    preset = get_preset("clip_lora", PresetContext("few_shot", 16, "dtd", train_size=47 * 16))
    assert (preset.lr, preset.batch_size, preset.template) == (2e-4, 32, "a photo of a {}.")
    assert preset.extra["optimizer"] == "adamw" and preset.extra["weight_decay"] == 1e-2
    assert preset.extra["eta_min"] == 1e-6 and preset.extra["iterations"] == 8000
    assert preset.num_epochs == math.ceil(8000 / (752 // 32))  # 23 full batches per epoch -> 348 epochs
    config = clip_lora_config(12)
    assert (config.r, config.lora_alpha, config.lora_dropout, config.bias) == (2, 1, 0.25, "none")
    expected = {f"{tower}_model.encoder.layers.{i}.self_attn.{p}_proj" for tower in ("text", "vision")
                for i in range(12) for p in "qkv"}  # fmt: skip
    assert set(config.target_modules) == expected


def test_trainable_tensors_are_q_k_v_lora_of_both_towers():
    model = get_peft_model(tiny_clip(), clip_lora_config(tiny_clip()))
    trainable = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    expected = {}
    for tower, width in (("text", TEXT_WIDTH), ("vision", VISION_WIDTH)):
        for i in range(2):
            for p in "qkv":
                stem = f"base_model.model.{tower}_model.encoder.layers.{i}.self_attn.{p}_proj"
                expected[f"{stem}.lora_A.default.weight"] = (2, width)
                expected[f"{stem}.lora_B.default.weight"] = (width, 2)
    assert trainable == expected
    layer = model.base_model.model.text_model.encoder.layers[0].self_attn.q_proj
    assert layer.scaling["default"] == 0.5  # alpha / r


def test_save_load_bit_identical_and_disable_adapter_is_the_base(tmp_path):
    model = lora_model()
    model.save_pretrained(tmp_path / "a")
    config = json.loads((tmp_path / "a" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 2
    loaded = PeftModel.from_pretrained(tiny_clip(), tmp_path / "a").eval()
    saved = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    again = loaded.state_dict()
    assert saved and all(torch.equal(v, again[k]) for k, v in saved.items())
    ids = tokenizer()(["a photo of a cat."], return_tensors="pt").input_ids
    x = pixels(2)
    with torch.no_grad():
        assert torch.equal(model.get_image_features(pixel_values=x).pooler_output,
                           loaded.get_image_features(pixel_values=x).pooler_output)  # fmt: skip
        base = tiny_clip()
        with model.disable_adapter():
            assert torch.equal(model.get_text_features(input_ids=ids).pooler_output,
                               base.get_text_features(input_ids=ids).pooler_output)  # fmt: skip
            assert torch.equal(model.get_image_features(pixel_values=x).pooler_output,
                               base.get_image_features(pixel_values=x).pooler_output)  # fmt: skip
        assert not torch.allclose(model.get_image_features(pixel_values=x).pooler_output,
                                  base.get_image_features(pixel_values=x).pooler_output)  # fmt: skip


def test_classifier_uses_the_template_through_both_lora_towers():
    model = lora_model()
    clf = PromptClassifier(model, tokenizer(), CLASSES, template="a photo of a {}.")
    # hand reference: LoRA merged into a plain CLIP (W + B A * alpha / r), the template texts, cosine * 100
    merged = tiny_clip()
    lora = dict(model.named_parameters())
    with torch.no_grad():
        for name, module in merged.named_modules():
            stem = f"base_model.model.{name}"
            if f"{stem}.lora_A.default.weight" in lora:
                a, b = lora[f"{stem}.lora_A.default.weight"], lora[f"{stem}.lora_B.default.weight"]
                module.weight += (b @ a) * (1 / 2)
        ids = tokenizer()([f"a photo of a {c}." for c in CLASSES], padding=True, return_tensors="pt").input_ids
        text = F.normalize(merged.get_text_features(input_ids=ids).pooler_output, dim=-1)
        image = F.normalize(merged.get_image_features(pixel_values=pixels(2)).pooler_output, dim=-1)
        expected = merged.logit_scale.exp() * image @ text.t()
        assert text.shape == (3, PROJ_DIM)
        torch.testing.assert_close(clf(pixels(2)), expected, atol=1e-4, rtol=1e-4)
        # the eval cache follows the adapter state: disabled -> zero-shot CLIP's features, enabled again -> LoRA's
        with model.disable_adapter():
            torch.testing.assert_close(clf.text_features(), clf.zero_shot_text_features())
        torch.testing.assert_close(clf.text_features(), text, atol=1e-5, rtol=1e-5)


def test_cosine_matches_torch_cosine_annealing():
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([p], lr=2e-4)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=40, eta_min=1e-6)
    for step in range(40):
        assert cosine_lr(step, base_lr=2e-4, total=40, eta_min=1e-6) == pytest.approx(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("clip_lora") / "model")


def test_loop_trains_clip_lora_with_adamw_and_writes_a_lora_adapter(model_dir, tmp_path):
    torch.set_num_threads(1)
    out = tmp_path / "run"
    results = main(base_args(model_dir, out, "clip_lora", "--no_eval_zero_shot"))
    assert results["method"] == "clip_lora" and results["peft_type"] == "lora"
    assert results["template"] == "a photo of a {}." and results["optimizer"] == "adamw"
    assert results["weight_decay"] == 1e-2 and results["global_step"] == 8  # the user's 2 epochs x 4 steps
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and (config["r"], config["lora_alpha"]) == (2, 1)
    card = (out / "adapter" / "README.md").read_text()
    assert "CLIP-LoRA" in card and "Low-Rank Few-Shot Adaptation of Vision-Language Models" in card
    assert "Zanella" in card


@pytest.mark.parametrize("flag,value", [("--momentum", "0.5"), ("--warmup_epochs", "2"), ("--lr_granularity", "step")])
def test_sgd_only_arguments_are_refused(model_dir, tmp_path, flag, value):
    with pytest.raises(ValueError, match=flag.lstrip("-") + ".*would be ignored.*adamw"):
        main(base_args(model_dir, tmp_path / "x", "clip_lora", flag, value))


# -- ProGrad / KgCoOp on a LoRA adapter -----------------------------------------------------------------------------
def _hand_features(clip, texts, px):
    ids = tokenizer()(texts, padding=True, return_tensors="pt").input_ids
    text = F.normalize(clip.get_text_features(input_ids=ids).pooler_output, dim=-1)
    image = F.normalize(clip.get_image_features(pixel_values=px).pooler_output, dim=-1)
    return text, image


def test_lora_prograd_projected_gradient_equals_hand_computation():
    from peft_vlprompt.baselines.regularisers import RegularisedObjective
    from peft_vlprompt.optim import ProGrad
    from peft_vlprompt.training.objectives import Objective, StepInputs

    model = get_peft_model(tiny_clip(), clip_lora_config(tiny_clip(), lora_dropout=0.0))  # no dropout: repeatable
    torch.manual_seed(4)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.5)
    params = [p for p in model.parameters() if p.requires_grad]
    px, labels, lam = pixels(4, seed=7), torch.tensor([0, 1, 2, 1]), 0.7
    texts = [f"a photo of a {c}." for c in CLASSES]

    # hand reference: task gradient (CE), general gradient (soft CE to the frozen CLIP's logits), projection per tensor
    text, image = _hand_features(model, texts, px)
    student = model.base_model.model.logit_scale.exp() * image @ text.t()
    with torch.no_grad():
        base = tiny_clip()
        zs_text, zs_image = _hand_features(base, texts, px)
        teacher = base.logit_scale.exp() * zs_image @ zs_text.t()
    general = -(F.softmax(teacher, -1) * F.log_softmax(student, -1)).sum(-1).mean()
    g_general = torch.autograd.grad(general, params, retain_graph=True)
    g_task = torch.autograd.grad(F.cross_entropy(student, labels), params)
    expected, conflicts = [], 0
    for p, d, g in zip(params, g_task, g_general):
        dot = (d * g).sum()
        if dot < 0:
            conflicts += 1
            d = d - lam * dot / (g * g).sum() * g
        expected.append(p.detach() - d)  # SGD, lr 1
    assert 0 < conflicts < len(params)  # both branches of the rule are exercised

    clf = PromptClassifier(model, tokenizer(), CLASSES, template="a photo of a {}.")
    objective = RegularisedObjective(Objective(), prograd=True, kgcoop_weight=None)
    clf.eval()
    objective.prepare(clf, vision_prompted=True)
    clf.train()
    feats = clf.image_features(px)
    text_features = clf.text_features()
    logits = clf.logits(feats, text_features)
    terms = objective(StepInputs(clf, logits, labels, feats, text_features, px))
    assert set(terms) == {"ce", "prograd_kl"} and objective.direction_terms == ("prograd_kl",)
    optimizer = ProGrad(torch.optim.SGD(params, lr=1.0), lambda_=lam)
    optimizer.add_general_direction(terms["prograd_kl"])
    terms["ce"].backward()
    optimizer.step()
    for p, e in zip(params, expected):
        torch.testing.assert_close(p.detach(), e, atol=1e-5, rtol=1e-4)


def test_lora_kgcoop_term_equals_hand_computation():
    from peft_vlprompt.baselines.regularisers import RegularisedObjective
    from peft_vlprompt.training.objectives import Objective, StepInputs

    model = lora_model()
    texts = [f"a photo of a {c}." for c in CLASSES]
    with torch.no_grad():
        text, _ = _hand_features(model, texts, pixels(1))
        zs_text, _ = _hand_features(tiny_clip(), texts, pixels(1))
    expected = 8.0 * (1 - (text * zs_text).sum(-1).mean())
    clf = PromptClassifier(model, tokenizer(), CLASSES, template="a photo of a {}.")
    objective = RegularisedObjective(Objective(), prograd=False, kgcoop_weight=8.0)
    objective.prepare(clf, vision_prompted=True)
    feats, tf = clf.image_features(pixels(2)), clf.text_features()
    terms = objective(StepInputs(clf, clf.logits(feats, tf), torch.tensor([0, 1]), feats, tf, pixels(2)))
    assert objective.direction_terms == () and expected > 0
    torch.testing.assert_close(terms["kgcoop"], expected, atol=1e-5, rtol=1e-4)


def test_loop_runs_clip_lora_with_prograd_and_kgcoop(model_dir, tmp_path):
    torch.set_num_threads(1)
    args = ["--no_eval_zero_shot", "--prograd_lambda", "1.0", "--kgcoop_weight", "8.0", "--num_epochs", "1"]
    results = main(base_args(model_dir, tmp_path / "r", "clip_lora", *args))
    assert results["method"] == "clip_lora" and results["global_step"] == 4


@pytest.mark.parametrize(
    "method,flag,match",
    [("prograd", "--prograd_lambda", "has this term already.*lambda_"),
     ("kgcoop", "--kgcoop_weight", "has this term already.*kg_weight"),
     ("cocoop", "--kgcoop_weight", "cannot apply.*depend on each image"),
     ("zeroshot", "--prograd_lambda", "would be ignored")],
)  # fmt: skip
def test_regularisers_are_refused_where_meaningless(model_dir, tmp_path, method, flag, match):
    with pytest.raises(ValueError, match=flag.lstrip("-") + ".*" + match):
        main(base_args(model_dir, tmp_path / "x", method, flag, "1.0"))


@pytest.mark.slow
def test_resume_inside_an_epoch_is_bit_identical_with_lora_dropout(model_dir, tmp_path):
    """Dropout draws from the global RNG: resuming must not shift it (the training DataLoader has its own
    generator, so starting the resumed epoch's iterator draws nothing)."""
    from safetensors.torch import load_file

    torch.set_num_threads(1)
    main(base_args(model_dir, tmp_path / "full", "clip_lora", "--no_eval_zero_shot"))
    part = ["--no_eval_zero_shot", "--checkpointing_steps", "3"]
    main(base_args(model_dir, tmp_path / "part", "clip_lora", *part, "--max_train_steps", "3"))  # stops in epoch 1
    main(base_args(model_dir, tmp_path / "part", "clip_lora", *part, "--resume_from_checkpoint", "latest"))
    full = load_file(tmp_path / "full" / "adapter" / "adapter_model.safetensors")
    resumed = load_file(tmp_path / "part" / "adapter" / "adapter_model.safetensors")
    assert full.keys() == resumed.keys() and all(torch.equal(full[k], resumed[k]) for k in full)
