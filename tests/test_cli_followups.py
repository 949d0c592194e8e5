"""Follow-ups of issue 11: presets yield to user values by field group, user depths are never clipped, our own
validation errors end the examples with status 2 and one line, the DPL search's arguments go through the shared
validator, RESTORE's `--adapter_kwargs` are checked before any load, files respect the umask, and shared CSC is not
per-class context.

Run: `python -m pytest tests/test_cli_followups.py -q`.
"""

import json
import logging
from pathlib import Path

import pytest
from safetensors.torch import load_file

from peft_vlprompt._validation import RunRefused
from peft_vlprompt.training import main
from peft_vlprompt.training.presets import PresetContext, adapter_settings, get_preset
from tests.test_training_fixtures import base_args, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]
QUICK = ("--max_train_steps", "1", "--no_eval_zero_shot", "--torch_threads", "1")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


def _saved(out: Path) -> tuple[dict, dict]:
    folder = out / "adapter"
    return json.loads((folder / "adapter_config.json").read_text()), load_file(
        str(folder / "adapter_model.safetensors")
    )


# -- 1. presets yield by field group --------------------------------------------------------------------------------
def test_help_example_n_ctx_trains_that_many_vectors(model_dir, tmp_path, caplog):
    """`--method coop --adapter_kwargs '{"n_ctx": 8}'`: the base2new coop preset's ctx_init yields (logged)."""
    assert get_preset("coop", PresetContext("base2new", 4, "x")).adapter == {"ctx_init": "a photo of a"}
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="peft_vlprompt.training.presets"):
        main(base_args(model_dir, out, "coop", *QUICK, "--adapter_kwargs", '{"n_ctx": 8}'))
    config, tensors = _saved(out)
    assert config["n_ctx"] == 8 and config["ctx_init"] is None
    (ctx,) = [t for name, t in tensors.items() if "ctx" in name]
    assert ctx.shape[0] == 8
    dropped = [r.getMessage() for r in caplog.records if "dropped" in r.getMessage()]
    assert len(dropped) == 1 and "'ctx_init': 'a photo of a'" in dropped[0] and "n_ctx" in dropped[0]


@pytest.mark.parametrize(
    "method, protocol, user, want",
    [
        # few_shot coop preset: n_ctx 16; the user's ctx_init alone decides the length (4 words)
        ("coop", "few_shot", {"ctx_init": "a photo of a"}, {"ctx_init": "a photo of a"}),
        ("coop", "base2new", {"n_ctx": 8}, {"n_ctx": 8}),
        ("cocoop", "few_shot", {"n_ctx": 8}, {"n_ctx": 8}),
        # ProGrad: the whole context group yields, lambda_/temperature (another group) stay the preset's
        (
            "prograd",
            "few_shot",
            {"ctx_init_split": "tokens"},
            {"ctx_init_split": "tokens", "lambda_": 1.0, "temperature": 1.0},
        ),
        ("kgcoop", "few_shot", {"kg_weight": 2.0}, {"ctx_init": "a photo of a", "kg_weight": 2.0}),
        # deep prompts have no such group: the user's field replaces only itself
        ("maple", "few_shot", {"n_ctx": 3}, {"n_ctx": 3, "depth": 9, "ctx_init": "a photo of a"}),
    ],
)
def test_preset_drops_the_whole_group_the_user_touched(method, protocol, user, want):
    preset = get_preset(method, PresetContext(protocol, 16, "caltech101"))
    assert adapter_settings(method, preset, user) == want


def test_explicit_n_ctx_and_ctx_init_conflict_stays_an_error(model_dir, tmp_path):
    kwargs = json.dumps({"n_ctx": 8, "ctx_init": "a photo of a"})
    with pytest.raises(ValueError, match=r"`n_ctx`=8 conflicts with `ctx_init`='a photo of a'"):
        main(base_args(model_dir, tmp_path / "out", "coop", *QUICK, "--adapter_kwargs", kwargs))
    assert not (tmp_path / "out").exists()


# -- 7. shared CSC is one context for all classes -------------------------------------------------------------------
def test_shared_csc_trains_base_to_new_and_per_class_context_is_refused(model_dir, tmp_path):
    """CSC with ctx_init under the released `class_specific_init="shared"` is one context: it generalises to new
    classes like plain CoOp (released CoOp ignores CSC when CTX_INIT is set); per-class context cannot."""
    out = tmp_path / "shared"
    shared = json.dumps({"class_specific": True, "ctx_init": "a photo of a"})
    results = main(base_args(model_dir, out, "coop", *QUICK, "--adapter_kwargs", shared))
    assert "new" in json.dumps(results)
    config, tensors = _saved(out)
    assert config["class_specific"] is True and config["class_specific_init"] == "shared"
    (ctx,) = [t for name, t in tensors.items() if "ctx" in name]
    assert ctx.dim() == 2 and ctx.shape[0] == 4  # (n_ctx, width): no class axis
    per_class = json.dumps({"class_specific": True, "ctx_init": "a photo of a", "class_specific_init": "per_class"})
    with pytest.raises(ValueError, match="class-specific context cannot be evaluated on other classes"):
        main(base_args(model_dir, tmp_path / "per_class", "coop", *QUICK, "--adapter_kwargs", per_class))


def test_card_of_shared_csc_says_any_class_names_work():
    from peft import get_peft_model

    from peft_vlprompt import CoOpConfig
    from peft_vlprompt.hub import render_card
    from tests.tiny import tiny_clip

    shared = CoOpConfig(ctx_init="a photo of a", class_specific=True, n_classes=3)
    card = render_card(get_peft_model(tiny_clip(), shared), base_model="me/tiny-clip").text
    assert "any class names work" in card and "class-specific context for" not in card
    per_class = CoOpConfig(ctx_init="a photo of a", class_specific=True, n_classes=3, class_specific_init="per_class")
    card = render_card(get_peft_model(tiny_clip(), per_class), base_model="me/tiny-clip").text
    assert "in training label order" in card and "class-specific context for exactly 3 classes" in card


# -- 8. --checkpoints_total_limit says when older checkpoints go ----------------------------------------------------
def test_checkpoints_total_limit_help_says_deletion_follows_a_complete_checkpoint():
    from peft_vlprompt.training.parser import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "older ones are deleted only after the new one is complete" in text


# -- 2. a user's depth deeper than the model is an error; a preset's is clipped ------------------------------------
@pytest.mark.parametrize(
    "method, kwargs, field, tower",
    [
        ("ivlp", {"depth": 3}, "depth", "text"),
        ("ivlp", {"depth": 2, "vision_depth": 5}, "vision_depth", "vision"),
        ("vpt", {"depth": 12}, "depth", "vision"),
        ("maple", {"depth": 9}, "depth", "text"),
        ("restore", {"depth": 4}, "depth", "text"),
    ],
)
def test_user_depth_deeper_than_the_model_is_an_error(model_dir, tmp_path, caplog, method, kwargs, field, tower):
    value = kwargs[field]
    with caplog.at_level(logging.WARNING, logger="peft_vlprompt.tuners.deep_prompt.presets"):
        with pytest.raises(
            RunRefused, match=rf"`{field}`={value} .* deeper than the model's {tower} tower, which has 2 "
        ):
            main(base_args(model_dir, tmp_path / "out", method, *QUICK, "--adapter_kwargs", json.dumps(kwargs)))
    assert not [r for r in caplog.records if f"`{field}`={value} is deeper" in r.getMessage()]  # never clipped


def test_the_early_check_never_clips_a_user_depth(caplog):
    """The check before loading sizes to 12 layers, or deeper for a deeper user depth (a ViT-L vision tower has 24)."""
    from types import SimpleNamespace

    from peft_vlprompt.training.method_checks import check_adapter_settings
    from peft_vlprompt.training.methods import get_method

    args = SimpleNamespace(adapter_overrides=lambda: {"depth": 20}, dataset="dtd", sources={})
    with caplog.at_level(logging.WARNING):
        check_adapter_settings(get_method("vpt"), None, args, get_preset("vpt", PresetContext("few_shot", 16, "dtd")))
    assert "deeper than the model" not in caplog.text


def test_preset_depth_is_clipped_to_a_shallow_model_and_logged(model_dir, tmp_path, caplog):
    """MaPLe's preset depth 9 on the 2-layer tiny CLIP: prompts in both layers, and the log says so."""
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="peft_vlprompt.tuners.deep_prompt.presets"):
        main(base_args(model_dir, out, "maple", *QUICK))
    config, _ = _saved(out)
    assert config["text_lengths"] == [2, 2] and config["vision_lengths"] == [2, 2]
    assert any("`depth`=9 is deeper than the model's 2 layers" in r.getMessage() for r in caplog.records)


# -- 5. RESTORE's --adapter_kwargs are checked before any load -----------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"fs_weigth": 1.0}, r"unknown field 'fs_weigth' \(did you mean 'fs_weight'"),
        ({"vision_ratio": "high"}, r"`vision_ratio` must be a float, got str 'high'"),
        ({"text_ratio": float("nan")}, r"`text_ratio` must be a finite number"),
        ({"text_lengths": [2, 2]}, r"sets \['text_lengths'\], which the restore preset computes"),
        ({"coupling": "none"}, r"coupling"),
    ],
)
def test_restore_adapter_kwargs_fail_before_anything_is_loaded(model_dir, tmp_path, monkeypatch, kwargs, match):
    from peft_vlprompt.training import loop

    def no_load(*args, **kw):
        raise AssertionError("data or model loaded before the adapter settings were checked")

    monkeypatch.setattr(loop, "load_protocol_data", no_load)
    monkeypatch.setattr(loop, "load_clip", no_load)
    argv = base_args(model_dir, tmp_path / "out", "restore", *QUICK, "--adapter_kwargs", json.dumps(kwargs))
    with pytest.raises(ValueError, match=match):
        main(argv)


# -- 4. the DPL search's arguments: the shared validation and the early checks -------------------------------------
def _search_args(tmp_path, *extra):
    return ["--output_dir", str(tmp_path / "search"), *extra]


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--lr", "inf"], r"`lr` must be a finite number, got inf"),
        (["--weight_decay", "nan"], r"`weight_decay` must be a finite number, got nan"),
        (["--alpha_lr", "inf"], r"`alpha_lr` must be a finite number, got inf"),
        (["--max_grad_norm", "inf"], r"`max_grad_norm` must be a finite number, got inf"),
        (["--momentum", "-0.5"], r"`momentum` must be >= 0, got -0.5"),
        (["--subnet_init_std", "0"], r"`subnet_init_std` must be > 0, got 0.0"),
        (["--class_chunk_size", "0"], r"`class_chunk_size` must be >= 1, got 0"),
        (["--text_candidates", "0", "-2"], r"`text_candidates` must contain lengths >= 0, got -2 at index 1"),
    ],
)
def test_dpl_search_arguments_are_validated(tmp_path, extra, match):
    from peft_vlprompt.dpl.run import parse_args

    with pytest.raises(ValueError, match=match):
        parse_args(_search_args(tmp_path, *extra))


@pytest.mark.parametrize(
    "content, match",
    [
        ({"lrr": 0.1}, r"file .*args\.json: unknown field 'lrr' \(did you mean 'lr'"),
        ({"num_epochs": "three"}, r"file .*args\.json: `num_epochs` must be an int, got str 'three'"),
        ({"warmup_lr": float("nan")}, r"file .*args\.json: `warmup_lr` must be a finite number"),
        ({"shots": True}, r"`shots` must be an int, got bool True"),
        ([1, 2], r"must hold a JSON object of arguments, got list"),
    ],
)
def test_dpl_search_arguments_file_is_validated_and_unknown_keys_named(tmp_path, content, match):
    from peft_vlprompt.dpl.run import parse_args

    path = tmp_path / "args.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        parse_args([str(path)])


def test_dpl_search_arguments_file_sets_both_dataclasses(tmp_path):
    from peft_vlprompt.dpl.run import parse_args

    path = tmp_path / "args.json"
    path.write_text(json.dumps({"dataset": "toy_colors", "shots": 4, "lr": 0.01, "text_candidates": [0, 2]}))
    run_args, search_args = parse_args([str(path)])
    assert (run_args.dataset, run_args.shots, run_args.text_candidates, search_args.lr) == (
        "toy_colors",
        4,
        [0, 2],
        0.01,
    )
    assert search_args.num_epochs == 80  # the rest keep their defaults


def test_dpl_search_paths_and_combinations_fail_before_anything_is_loaded(tmp_path, monkeypatch):
    from peft_vlprompt.dpl import run
    from peft_vlprompt.training import build

    def no_load(*args, **kw):
        raise AssertionError("loaded before the arguments were checked")

    monkeypatch.setattr(build, "load_clip", no_load)
    monkeypatch.setattr("peft_vlprompt.data.load_task", no_load)
    cases = [
        (["--model", str(tmp_path / "nowhere")], r"`model` folder .*nowhere does not exist"),
        (["--data_dir", str(tmp_path / "no_data")], r"`data_dir` folder .*no_data does not exist"),
        (["--dataset", "toy_objectz"], r"Unknown dataset 'toy_objectz'"),
        (["--template", "a photo"], r"`template` must contain '\{\}'"),
        (["--resume_from_checkpoint", "latest"], r"'latest' but `output_dir` .*search has no complete checkpoint"),
        (["--resume_from_checkpoint", str(tmp_path / "ck")], r"`resume_from_checkpoint` folder .*ck does not exist"),
    ]
    for extra, match in cases:
        with pytest.raises(ValueError, match=match):
            run.main(_search_args(tmp_path, *extra))
    earlier = tmp_path / "search" / "checkpoints" / "checkpoint_3"  # whatever the checkpoint format, `latest` finds it
    monkeypatch.setattr(run, "latest_checkpoint", lambda out: earlier if Path(out) == tmp_path / "search" else None)
    with pytest.raises(
        ValueError, match=r"holds the checkpoints of an earlier search .*--resume_from_checkpoint latest"
    ):
        run.main(_search_args(tmp_path))


# -- 3. our own validation errors end the examples like argparse: status 2, one line, no traceback -----------------
def _example(script: str, *argv: str):
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, f"examples/{script}", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=env, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_examples_end_refused_runs_with_status_2_and_one_line(model_dir, tmp_path):
    conflict = json.dumps({"n_ctx": 8, "ctx_init": "a photo of a"})
    common = ["--model", str(model_dir), "--output_dir", str(tmp_path / "out"), "--torch_threads", "1"]
    cases = [
        # after the heavy imports: the adapter settings and an unknown dataset name
        ("train.py", ["--method", "coop", "--adapter_kwargs", conflict, *common], "`n_ctx`=8 conflicts with"),
        ("train.py", ["--method", "coop", "--dataset", "toy_objectz", *common], "Unknown dataset 'toy_objectz'"),
        # before them (standard library only)
        ("train.py", ["--method", "coop", "--lr", "-5", *common], "`lr` must be > 0, got -5.0"),
        ("dpl_search.py", ["--lr", "inf", "--output_dir", str(tmp_path / "s")], "`lr` must be a finite number"),
        # after the model is loaded (RunRefused), still before any training
        (
            "train.py",
            [
                "--method",
                "ivlp",
                "--adapter_kwargs",
                '{"depth": 9}',
                "--model",
                str(model_dir),
                "--output_dir",
                str(tmp_path / "deep"),
                "--torch_threads",
                "1",
            ],
            "deeper than the model's",
        ),
    ]
    for script, argv, message in cases:
        done = _example(script, *argv)
        lines = [line for line in done.stderr.splitlines() if line.startswith(f"examples/{script}: error: ")]
        assert done.returncode == 2, (script, argv, done.stderr[-2000:])
        assert "Traceback" not in done.stderr and len(lines) == 1 and message in lines[0], done.stderr[-2000:]
    assert not (tmp_path / "out").exists() and not (tmp_path / "s").exists()


def test_deep_prompt_init_phrase_yields_to_a_longer_user_context(model_dir, tmp_path, caplog):
    """Released MaPLe/IVLP initialise from "a photo of a" only while `n_ctx <= 4`, else randomly: a user's longer
    text context is trained (random init, logged), a shorter one keeps the phrase."""
    from peft_vlprompt.training.method_checks import _settings

    maple = get_preset("maple", PresetContext("few_shot", 16, "dtd"))
    assert _settings("maple", maple, {"n_ctx": 6})["ctx_init"] is None
    assert _settings("maple", maple, {"n_ctx": 4})["ctx_init"] == "a photo of a"
    assert _settings("maple", maple, {"n_ctx": 6, "ctx_init": "a b c"})["ctx_init"] == "a b c"  # the user's: kept
    ivlp = get_preset("ivlp", PresetContext("few_shot", 16, "dtd"))
    assert _settings("ivlp", ivlp, {"n_ctx_text": 5})["ctx_init"] is None
    assert _settings("ivlp", ivlp, {"n_ctx_vision": 8})["ctx_init"] == "a photo of a"
    restore = get_preset("restore", PresetContext("few_shot", 16, "dtd"))
    assert _settings("restore", restore, {"n_ctx": 6})["ctx_init"] is None  # the config default's phrase yields too
    out = tmp_path / "out"
    with caplog.at_level(logging.INFO, logger="peft_vlprompt.training.method_checks"):
        main(base_args(model_dir, out, "maple", *QUICK, "--adapter_kwargs", '{"n_ctx": 6, "depth": 2}'))
    config, _ = _saved(out)
    assert config["ctx_init"] is None and config["text_lengths"] == [6, 6]
    assert any("ctx_init 'a photo of a' (4 words) dropped" in r.getMessage() for r in caplog.records)
