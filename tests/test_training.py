"""The training loop end to end on a tiny CLIP and tiny data: methods, resume, feature cache, schedule."""

import json
import logging
import math

import pytest
import torch
from safetensors.torch import load_file

from peft_vlprompt.training import dassl_lr, main
from tests.test_training_fixtures import base_args, make_imagefolder, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


def adapter(output_dir):
    return load_file(str(output_dir / "adapter" / "adapter_model.safetensors"))


def test_dassl_schedule_matches_hand_values():
    # E=4, W=1: epoch 0 at the warm-up lr; epoch e>=1 at base * (1 + cos(pi * (e - 1) / 4)) / 2
    lrs = [dassl_lr(e, base_lr=0.002, num_epochs=4) for e in range(4)]
    assert lrs[0] == 1e-5
    assert lrs[1] == pytest.approx(0.002)
    assert lrs[2] == pytest.approx(0.002 * (1 + math.cos(math.pi / 4)) / 2)
    assert lrs[3] == pytest.approx(0.001)
    # per-step granularity samples the same curve inside the epoch
    assert dassl_lr(2, base_lr=0.002, num_epochs=4, progress=0.5) == pytest.approx(
        0.002 * (1 + math.cos(math.pi * 1.5 / 4)) / 2
    )


COOP_ARGS = ("--shots", "8")  # 8 shots > the 6 images per class of the tiny dataset


@pytest.fixture(scope="module")
def coop_run(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("coop")
    records = []
    handler = logging.Handler(level=logging.WARNING)
    handler.emit = lambda record: records.append(record.getMessage())
    logging.getLogger().addHandler(handler)
    pushed = []
    try:
        with pytest.MonkeyPatch.context() as mp:  # the Hub upload itself is the hub module's business (and tests)
            mp.setattr("peft_vlprompt.hub.push_prompts", lambda model, repo, **kw: pushed.append((model, repo, kw)))
            results = main(base_args(model_dir, out, "coop", *COOP_ARGS, "--push_to_hub", "--hub_model_id", "me/x"))
    finally:
        logging.getLogger().removeHandler(handler)
    return out, results, "\n".join(records), pushed


def test_coop_trains_two_epochs_and_writes_results(coop_run):
    out, results, log_text, pushed = coop_run
    ((model, repo, kwargs),) = pushed
    assert repo == "me/x" and kwargs["results"] == results and kwargs["classnames"] == ["bird", "cat"]
    assert kwargs["training_config"]["method"] == "coop" and type(model).__name__ == "PeftModel"
    assert "fewer than 8 images; used all of them" in log_text
    written = json.loads((out / "all_results.json").read_text())
    assert written == results
    assert results["method"] == "coop" and results["global_step"] == 2 * 6  # 12 base images / batch 2, 2 epochs
    for key in ("base_accuracy", "new_accuracy", "hm"):
        assert 0 <= results[key] <= 100 and 0 <= results["zero_shot"][key] <= 100
    b, n = results["base_accuracy"], results["new_accuracy"]
    assert results["hm"] == pytest.approx(0 if b + n == 0 else 2 * b * n / (b + n), abs=1e-3)
    saved = adapter(out)
    assert list(saved) == ["base_model.model.text_model.embeddings.token_embedding.coop_ctx"]
    assert saved["base_model.model.text_model.embeddings.token_embedding.coop_ctx"].shape == (4, 32)


def test_image_feature_cache_gives_the_same_adapter(model_dir, tmp_path, coop_run, caplog):
    """With one cached view per epoch the cached run sees the very same augmented images as the uncached one."""
    caplog.set_level(logging.INFO, logger="peft_vlprompt.training")
    out = tmp_path / "cached"
    cached = main(base_args(model_dir, out, "coop", *COOP_ARGS, "--cache_image_features", "--num_views", "2",
                            "--no_eval_zero_shot"))  # fmt: skip
    assert "cached 2 views x 12 images of frozen image features" in caplog.text
    reference, results = adapter(coop_run[0]), coop_run[1]
    assert cached["global_step"] == results["global_step"]
    for key, value in adapter(out).items():
        torch.testing.assert_close(value, reference[key], atol=1e-6, rtol=1e-5)


def test_kill_and_resume_gives_a_bit_identical_adapter(model_dir, tmp_path):
    """ProGrad with gradient accumulation: a run stopped at step 5 (mid-epoch 1, at a checkpoint) and resumed ends
    bit-identical to the uninterrupted run."""

    def run(out, *extra):
        return main(base_args(model_dir, out, "prograd", "--no_eval_zero_shot", "--batch_size", "1",
                              "--gradient_accumulation_steps", "2", "--checkpointing_steps", "5", *extra))  # fmt: skip

    full, part = tmp_path / "full", tmp_path / "part"
    assert run(full)["global_step"] == 8
    assert run(part, "--max_train_steps", "5")["global_step"] == 5
    assert sorted(p.name for p in (part / "checkpoints").iterdir()) == ["checkpoint_0"]
    state = json.loads((part / "checkpoints" / "checkpoint_0" / "vlprompt_state.json").read_text())
    assert (state["method"], state["global_step"]) == ("prograd", 5)
    # the checkpoint holds the adapter only
    saved = load_file(str(part / "checkpoints" / "checkpoint_0" / "adapter_model.safetensors"))
    assert list(saved) == list(adapter(full))
    assert not torch.equal(*[adapter(p)[k] for p in (full, part) for k in adapter(full)])
    assert run(part, "--resume_from_checkpoint", "latest")["global_step"] == 8
    a, b = adapter(full), adapter(part)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_deep_prompt_and_restore_methods_train(model_dir, tmp_path):
    """A DPL-style found.json (prefix prompts, with the optional distillation term), MaPLe from its preset, and
    RESTORE (surgery adapters, feature-shift term, ratio update at epoch 2 // 3 = 0) each run 2 epochs."""
    from peft_vlprompt.tuners.deep_prompt import DeepPromptConfig

    found = tmp_path / "found.json"
    found.write_text(json.dumps(DeepPromptConfig(mode="prefix", text_lengths=[2, 0], vision_lengths=[1, 3]).to_dict()))
    runs = {  # the DPL run also covers the few-shot protocol (4 classes x 4 shots / batch 2 = 8 steps per epoch)
        "dpl": ["--config", str(found), "--kd_weight", "0.5", "--protocol", "few_shot"],
        "maple": [],
        "restore": [],
    }
    for method, extra in runs.items():
        out = tmp_path / method
        results = main(base_args(model_dir, out, method, "--no_eval_zero_shot", *extra))
        if method == "dpl":
            assert results["global_step"] == 16 and 0 <= results["accuracy"] <= 100 and "hm" not in results
        else:
            assert results["global_step"] == 8 and 0 <= results["hm"] <= 100
        assert json.loads((out / "all_results.json").read_text())["method"] == method
        saved = adapter(out)
        config = json.loads((out / "adapter" / "adapter_config.json").read_text())
        assert config["peft_type"] == {"dpl": "DEEP_PROMPT", "maple": "DEEP_PROMPT", "restore": "RESTORE"}[method]
        assert not any("vision_model.encoder.layers.0.mlp" in k for k in saved)  # adapter only, no CLIP weights
        if method == "dpl":
            assert (config["mode"], config["text_lengths"], config["vision_lengths"]) == ("prefix", [2, 0], [1, 3])
        if method == "restore":  # the one-time ratio update ran and its flag was saved with the adapter
            flags = [v for k, v in saved.items() if "restore_updated" in k]
            assert flags and all(bool(f) for f in flags)


def test_zero_shot_cross_dataset_evaluates_source_and_targets(model_dir, tmp_path, monkeypatch):
    monkeypatch.setattr("datasets.config.HF_DATASETS_CACHE", str(tmp_path / "hf"))
    results = main(base_args(model_dir, tmp_path / "zs", "zeroshot", "--protocol", "cross_dataset",
                             "--eval_datasets", "imagefolder", "--data_dir", str(make_imagefolder(tmp_path / "f"))))  # fmt: skip
    assert results["global_step"] == 0 and results["peft_type"] is None
    # the imagefolder holds the same images and classes as the source: zero-shot CLIP scores them identically
    assert results["target_accuracy"] == {"imagefolder": results["accuracy"]}
    assert results["zero_shot"]["accuracy"] == results["accuracy"] == results["average_target_accuracy"]
    assert not (tmp_path / "zs" / "adapter").exists()


def _write_state(folder, **state):
    folder.mkdir(parents=True)
    (folder / "vlprompt_state.json").write_text(json.dumps(state))
    return str(folder)


ERROR_CASES = {
    "unknown dataset": (["--dataset", "no_such_set"], ValueError, r"Unknown dataset 'no_such_set'\. Known datasets:"),
    "unknown method": (["--method", "coopp"], ValueError, r"unknown `method` 'coopp'; available: .*coop"),
    "missing data dir": (
        ["--dataset", "dtd", "--data_dir", "{tmp}/nowhere"],
        FileNotFoundError,
        r"Data directory `data_dir` not found: .*nowhere",
    ),
    "corrupt split file": (["--dataset", "dtd", "--data_dir", "{tmp}/corrupt"], ValueError, r"is not valid JSON"),
    "missing split list": (
        ["--dataset", "fgvc_aircraft", "--data_dir", "{tmp}/aircraft"],
        FileNotFoundError,
        r"FGVCAircraft list file for 'fgvc_aircraft' not found",
    ),
    "other method's checkpoint": (
        ["--method", "prograd", "--resume_from_checkpoint", "{tmp}/ckpt"],
        ValueError,
        r"checkpoint .*ckpt was written by method 'coop' \(peft type 'coop'\) but this run trains 'prograd'",
    ),
}


@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_clear_errors_before_any_model_is_built(case, tmp_path, monkeypatch):
    from peft_vlprompt.training import loop
    from tests.data_fixtures import make_dtd

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the error")

    monkeypatch.setattr(loop, "load_clip", no_model)
    (tmp_path / "model").mkdir()  # passes the early path check; never loaded
    for name in ("config.json", "preprocessor_config.json"):
        (tmp_path / "model" / name).write_text("{}")
    make_dtd(tmp_path / "corrupt")
    (tmp_path / "corrupt" / "dtd" / "split_zhou_DescribableTextures.json").write_text('{"train": [')
    (tmp_path / "aircraft" / "fgvc_aircraft" / "images").mkdir(parents=True)
    _write_state(tmp_path / "ckpt", method="coop", peft_type="coop", global_step=3)
    extra, error, match = ERROR_CASES[case]
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    argv = base_args(tmp_path / "model", tmp_path / "out", "coop") + extra
    with pytest.raises(error, match=match):
        main(argv)


def test_objectives_against_hand_computed_terms():
    """Teacher features, ProGrad's direction term, the template ensemble and the distillation term by hand."""
    import torch.nn.functional as F
    from peft import get_peft_model

    from peft_vlprompt import CoOpConfig, PromptClassifier
    from peft_vlprompt.training.objectives import (
        DistillationObjective,
        ProGradObjective,
        StepInputs,
        distillation_loss,
        ensemble_text_features,
    )
    from tests.tiny import tiny_clip, tokenizer

    names = ["cat", "sea lion", "dog"]
    base = tiny_clip()

    def hand_text(template):  # unnormalised frozen text features of the template prompts, padded per prompt
        rows = []
        for name in names:
            ids = tokenizer()(template.format(name), return_tensors="pt")["input_ids"]
            with torch.no_grad():
                out = base.get_text_features(input_ids=ids)
            rows.append((out.pooler_output if hasattr(out, "pooler_output") else out)[0])
        return torch.stack(rows)

    clf = PromptClassifier(get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4)), tokenizer(), names).eval()
    image = F.normalize(torch.randn(5, 24, generator=torch.Generator().manual_seed(0)), dim=-1)
    logits = 3.0 * torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    labels = torch.tensor([0, 1, 2, 1, 0])
    inputs = StepInputs(clf, logits, labels, image, None, None)

    objective = ProGradObjective(temperature=2.0)
    objective.prepare(clf, vision_prompted=False)
    teacher = base.logit_scale.exp().detach() * image @ F.normalize(hand_text("a photo of a {}."), dim=-1).T
    p_t = F.softmax(teacher / 2.0, dim=-1)
    expected_kl = -(p_t * F.log_softmax(logits / 2.0, dim=-1)).sum(-1).mean() * 4.0
    terms = objective(inputs)
    assert objective.direction_terms == ("prograd_kl",)
    torch.testing.assert_close(terms["prograd_kl"], expected_kl, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(terms["ce"], F.cross_entropy(logits, labels))

    templates = ["a photo of a {}.", "a drawing of the {}."]
    expected = F.normalize((hand_text(templates[0]) + hand_text(templates[1])) / 2, dim=-1)
    torch.testing.assert_close(ensemble_text_features(clf, templates), expected, atol=1e-5, rtol=1e-5)

    # KL(p_teacher || p_student) * T^2 averaged over the batch, with the teacher from zero-shot CLIP
    p_s = F.log_softmax(logits / 2.0, dim=-1)
    hand_kd = (p_t * (p_t.log() - p_s)).sum(-1).mean() * 4.0
    torch.testing.assert_close(distillation_loss(logits, teacher, 2.0), hand_kd, atol=1e-5, rtol=1e-5)
    kd = DistillationObjective(weight=0.5, temperature=2.0)
    kd.prepare(clf, vision_prompted=False)
    torch.testing.assert_close(kd(inputs)["kd"], 0.5 * hand_kd, atol=1e-5, rtol=1e-5)


def test_presets_follow_the_papers_configs():
    from peft_vlprompt.training import PresetContext, available_methods, get_preset
    from peft_vlprompt.training.presets import coop_epochs, init_phrase

    # CoOp's COOP.md: 1 shot -> ep50, 2/4 -> ep100, 8/16 -> 200 epochs; ImageNet always ep50
    assert [coop_epochs(k, "dtd") for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    assert coop_epochs(16, "imagenet") == 50
    assert init_phrase("a type of pet, a photo of a {}.") == "a type of pet, a photo of a"
    pro = get_preset("prograd", PresetContext("base2new", 16, "oxford_pets", "a type of pet, a photo of a {}."))
    assert (pro.num_epochs, pro.lr, pro.batch_size, pro.template_table) == (200, 0.002, 32, "prograd")
    assert pro.adapter["ctx_init"] == "a type of pet, a photo of a" and pro.adapter["lambda_"] == 1.0
    assert get_preset("prograd", PresetContext("few_shot", 16, "dtd")).adapter["lambda_"] == 0.8
    src = get_preset("promptsrc", PresetContext("few_shot", 16, "dtd"))
    assert (src.num_epochs, src.adapter["gpa_mean"], src.adapter["gpa_std"]) == (50, 45.0, 5.0)
    assert get_preset("maple", PresetContext("cross_dataset", 16, "imagenet")).adapter["depth"] == 3
    kg = get_preset("kgcoop", PresetContext("base2new", 16, "dtd"))
    assert (kg.num_epochs, kg.batch_size, kg.adapter["kg_weight"]) == (100, 128, 8.0)
    expected = {"coop", "cocoop", "prograd", "kgcoop", "ivlp", "vpt", "deep_language", "maple", "promptsrc",
                "restore", "dpl", "deep_prompt", "zeroshot", "clip_lora", "linear_probe",
                "linear_probe_text"}  # fmt: skip
    assert set(available_methods()) == expected


def test_config_file_sets_method_and_unset_training_arguments(tmp_path):
    from peft_vlprompt.training.parser import parse_args
    from peft_vlprompt.training.preflight import _resolve_method
    from peft_vlprompt.tuners.deep_prompt import DeepPromptConfig

    adapter = DeepPromptConfig(mode="prefix", text_lengths=[1, 0], vision_lengths=[0, 1]).to_dict()
    file = tmp_path / "run.json"
    file.write_text(json.dumps({"adapter_config": adapter, "num_epochs": 3, "lr": 0.01}, default=str))
    args = parse_args(["--config", str(file), "--lr", "0.5"])
    spec, adapter_dict = _resolve_method(args)
    # no --method: the adapter type picks the method of the same name; the file fills num_epochs, the CLI's lr wins
    assert (spec.name, args.num_epochs, args.lr) == ("deep_prompt", 3, 0.5)
    assert adapter_dict["mode"] == "prefix"
    with pytest.raises(ValueError, match=r"method 'coop' cannot train a 'deep_prompt' adapter"):
        _resolve_method(parse_args(["--config", str(file), "--method", "coop"]))
