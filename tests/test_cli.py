"""`examples/train.py` as a user meets it: one precedence (command line > --config file > preset > default), errors
before any work naming the field or file and the value, honest results, a fast and quiet command line (issue 11:
items 3, 4, 7, 8, 14, 16, 17, 18, 21, 22)."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from peft_vlprompt import CoOpConfig, DeepPromptConfig
from peft_vlprompt._validation import RunRefused
from peft_vlprompt.training import DEFAULT_RUN, main, parse_args
from peft_vlprompt.training.inputs import apply_config_file
from peft_vlprompt.training.parser import build_parser
from tests.test_training_fixtures import register_tiny_dataset, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


@pytest.fixture
def nothing_loaded(monkeypatch):
    """Fail the test if data or a model is loaded (the error must come first)."""
    from peft_vlprompt.training import loop

    def refuse(*args, **kwargs):
        raise AssertionError("data or a model was loaded before the error")

    monkeypatch.setattr(loop, "load_clip", refuse)
    monkeypatch.setattr(loop, "load_protocol_data", refuse)


def tiny_argv(model_dir, out, *extra):
    return ["--dataset", register_tiny_dataset(), "--model", str(model_dir), "--output_dir", str(out),
            "--batch_size", "2", "--eval_batch_size", "16", "--no_eval_zero_shot", *extra]  # fmt: skip


def write_config(path, adapter: dict, **training) -> str:
    path.write_text(json.dumps({"adapter_config": adapter, **training}, default=str))
    return str(path)


# -- item 3: the config file's training arguments are used, under the command line, and validated ------------------
# -- item 7: more shots than a class has: the results and the card say what was trained --------------------------
# -- item 18: the run says where it wrote what ---------------------------------------------------------------------
def test_config_file_values_apply_under_the_command_line_and_results_are_truthful(model_dir, tmp_path, caplog):
    adapter = CoOpConfig(n_ctx=4).to_dict()
    config = write_config(tmp_path / "run.json", adapter, shots=8, seed=2, protocol="few_shot", num_epochs=1, lr=0.01)
    caplog.set_level(logging.INFO)
    out = tmp_path / "run"
    results = main(tiny_argv(model_dir, out, "--config", config, "--lr", "0.005"))
    # the file's shots/seed/protocol/epochs are used (they were dropped before); the command line's lr wins
    assert (results["seed"], results["protocol"], results["num_epochs"], results["lr"]) == (2, "few_shot", 1, 0.005)
    # 8 shots asked, the tiny dataset has 6 images per class: CoOp takes all 6, and the results say so
    assert (results["shots"], results["shots_requested"]) == (6, 8)
    assert results["classes_with_fewer_shots"] == {"bird": 6, "cat": 6, "dog": 6, "fish": 6}
    assert results["global_step"] == 4 * 6 // 2  # 4 classes x 6 images, batch 2, 1 epoch
    assert json.loads((out / "all_results.json").read_text())["shots"] == 6
    assert "6 shots per class" in ModelCard.load(out / "adapter" / "README.md").text
    assert "--lr 0.005 from the command line overrides 0.01" in caplog.text
    root = out.resolve()
    assert (
        f"results: {root / 'all_results.json'}" in caplog.text
        and f"adapter and model card: {root / 'adapter'}" in (caplog.text)
    )


@pytest.mark.parametrize(
    "training,match",
    [
        ({"lr": -5}, r"run\.json: `lr` must be > 0, got -5"),
        ({"num_epochs": "three"}, r"run\.json: `num_epochs` must be an int, got str 'three'"),
        ({"seed": 1.5}, r"run\.json: `seed` must be an int, got float 1\.5"),
        ({"num_epoch": 3}, r"run\.json: training arguments: unknown field 'num_epoch' \(did you mean 'num_epochs'"),
    ],
)
def test_config_file_training_arguments_are_validated_before_any_work(tmp_path, nothing_loaded, training, match):
    config = write_config(tmp_path / "run.json", CoOpConfig().to_dict(), **training)
    with pytest.raises(ValueError, match=match):
        main(["--config", config, "--output_dir", str(tmp_path / "out")])


def test_precedence_command_line_over_file_over_default():
    # pure argument handling, no file access beyond the config
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        config = write_config(Path(d) / "c.json", CoOpConfig().to_dict(), seed=7, shots=2, momentum=0.5)
        args = parse_args(["--config", config, "--seed", "3"])
        apply_config_file(args)
        assert (args.seed, args.shots, args.momentum, args.weight_decay) == (3, 2, 0.5, 5e-4)
        assert args.sources["seed"] == "command line" and args.sources["shots"] == "config file"
        assert "weight_decay" not in args.sources  # the default
        # built in Python, a value other than the default counts as given: it wins over the file too
        from peft_vlprompt.training import TrainArguments

        args = TrainArguments(config=config, seed=3)
        apply_config_file(args)
        assert (args.seed, args.shots, args.momentum) == (3, 2, 0.5)


# -- item 4: the method named must be what the config builds -------------------------------------------------------
def test_method_must_match_the_config_it_trains(tmp_path, nothing_loaded):
    ivlp = DeepPromptConfig(text_lengths=[2, 2], vision_lengths=[2, 2]).to_dict()
    config = tmp_path / "ivlp.json"
    config.write_text(json.dumps(ivlp, default=str))
    with pytest.raises(ValueError, match=r"--method maple trains MaPLe-coupled prompts.*it is a ivlp config"):
        main(["--method", "maple", "--config", str(config), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"--method dpl trains prefix prompts"):
        main(["--method", "dpl", "--config", str(config), "--output_dir", str(tmp_path / "out")])
    maple = DeepPromptConfig(text_lengths=[2, 2], coupling="maple").to_dict()
    config.write_text(json.dumps(maple, default=str))
    with pytest.raises(ValueError, match=r"--method ivlp trains uncoupled .*it is a maple config"):
        main(["--method", "ivlp", "--config", str(config), "--output_dir", str(tmp_path / "out")])
    # the same through --adapter_kwargs on a preset (built once without a model to check it)
    with pytest.raises(ValueError, match=r"`adapter_kwargs` \{'coupling': 'maple'\}: --method ivlp trains uncoupled"):
        main(["--method", "ivlp", "--adapter_kwargs", '{"coupling": "maple"}', "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"method 'maple'.*multiple values for keyword argument 'coupling'"):
        main(["--method", "maple", "--adapter_kwargs", '{"coupling": "none"}', "--output_dir", str(tmp_path / "o")])


# -- item 8: a resume must repeat the run's arguments and adapter --------------------------------------------------
def test_resume_with_other_arguments_or_adapter_is_refused_naming_each_field(model_dir, tmp_path):
    out = tmp_path / "run"
    config = tmp_path / "coop.json"
    config.write_text(json.dumps(CoOpConfig(n_ctx=4).to_dict(), default=str))
    common = tiny_argv(model_dir, out, "--method", "coop", "--config", str(config), "--protocol", "few_shot",
                       "--shots", "2", "--num_epochs", "2")  # fmt: skip
    main(common + ["--max_train_steps", "1", "--checkpointing_steps", "1"])
    resume = common + ["--resume_from_checkpoint", "latest"]
    with pytest.raises(RunRefused, match=r"seed: 1 in the checkpoint, 2 now; shots: 2 in the checkpoint, 3 now"):
        main(resume + ["--seed", "2", "--shots", "3"])
    config.write_text(json.dumps(CoOpConfig(n_ctx=6).to_dict(), default=str))
    with pytest.raises(RunRefused, match=r"into another adapter: adapter n_ctx: 4 in the checkpoint, 6 now"):
        main(resume)


# -- item 14: a typo'd adapter field names itself, the file and the closest field ----------------------------------
def test_typo_in_the_adapter_config_file_is_named(tmp_path, nothing_loaded):
    adapter = CoOpConfig().to_dict()
    adapter["n_ctxx"] = adapter.pop("n_ctx")
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps(adapter, default=str))
    with pytest.raises(ValueError, match=rf"{config}: CoOpConfig: unknown field 'n_ctxx' \(did you mean 'n_ctx'\?\)"):
        main(["--config", str(config), "--output_dir", str(tmp_path / "out")])
    adapter = CoOpConfig().to_dict()
    config.write_text(json.dumps(adapter, default=str))
    with pytest.raises(ValueError, match=r"`adapter_kwargs` for CoOpConfig: unknown field 'init_sdt' \(did you mean"):
        main(["--config", str(config), "--adapter_kwargs", '{"init_sdt": 0.1}', "--output_dir", str(tmp_path / "o")])
    with pytest.raises(ValueError, match=r"`adapter_kwargs` for method 'coop': unknown field 'nctx' \(did you mean"):
        main(["--method", "coop", "--adapter_kwargs", '{"nctx": 8}', "--output_dir", str(tmp_path / "o")])
    with pytest.raises(
        ValueError, match=r"for method 'deep_prompt': `text_lengths` must contain lengths >= 0, got -1"
    ):
        main(
            ["--method", "deep_prompt", "--adapter_kwargs", '{"text_lengths": [1, -1]}', "--output_dir", str(tmp_path)]
        )
    with pytest.raises(ValueError, match=r"for method 'coop': `init_std` must be > 0, got -0.1"):
        main(["--method", "coop", "--adapter_kwargs", '{"init_std": -0.1}', "--output_dir", str(tmp_path / "o")])


# -- a value that would have no effect is refused, never silently ignored ------------------------------------------
@pytest.mark.parametrize(
    "argv,match",
    [
        (["--eval_datasets", "dtd"], r"`eval_datasets`=\['dtd'\] would be ignored: `protocol` 'base2new'"),
        (["--num_views", "2"], r"`num_views`=2 would be ignored: it needs --cache_image_features"),
        (["--hub_model_id", "me/x"], r"`hub_model_id`='me/x' would be ignored: it needs --push_to_hub"),
        (["--checkpoints_total_limit", "2"], r"`checkpoints_total_limit`=2 would be ignored: no checkpoints"),
        (["--report_to", "wandb"], r"`report_to`='wandb' would be ignored: it needs --with_tracking"),
        (["--method", "coop", "--kd_weight", "0.5"], r"`kd_weight`=0.5 would be ignored: method 'coop' has no"),
    ],
)
def test_values_that_would_be_ignored_are_refused(argv, match, tmp_path, nothing_loaded):
    with pytest.raises(ValueError, match=match):
        main([*argv, "--output_dir", str(tmp_path / "out")])


# -- item 16: paths and required combinations are checked before anything is loaded -------------------------------
def test_paths_and_required_flags_are_checked_before_loading(tmp_path, nothing_loaded):
    with pytest.raises(ValueError, match=r"`model` folder /nonexistent/clip does not exist"):
        main(["--model", "/nonexistent/clip", "--output_dir", str(tmp_path / "out")])
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    with pytest.raises(
        ValueError,
        match=rf"`model` folder {tmp_path / 'half'} has no preprocessor_config.json or processor_config.json",
    ):
        main(["--model", str(tmp_path / "half"), "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"`model` 'not a/valid id!' is neither a local folder nor a Hub id"):
        main(["--model", "not a/valid id!", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"method 'dpl' has no preset adapter: pass --config"):
        main(["--method", "dpl", "--output_dir", str(tmp_path / "out")])
    with pytest.raises(ValueError, match=r"`config` file .*missing\.json does not exist"):
        main(["--config", str(tmp_path / "missing.json"), "--output_dir", str(tmp_path / "out")])


# -- item 17: --help says what the bare run does; the default value given explicitly is the default run ------------
def test_help_shows_real_defaults_and_giving_the_default_changes_nothing(caplog):
    text = " ".join(build_parser().format_help().split())  # argparse wraps lines anywhere
    assert "(default: None)" not in text and "default: not set" in text
    assert "bare run: 50" in text and "the method's preset" in text  # --num_epochs
    assert "--no_eval_zero_shot Skip the zero-shot CLIP evaluation" in text
    assert parse_args(["--no_eval_zero_shot"]).eval_zero_shot is False
    assert parse_args(["--eval_zero_shot", "false"]).eval_zero_shot is False
    caplog.set_level(logging.INFO)
    bare = parse_args([])
    for explicit in (["--dataset", DEFAULT_RUN["dataset"]], ["--method", DEFAULT_RUN["method"]]):
        args = parse_args(explicit)
        assert (args.num_epochs, args.batch_size, args.torch_threads) == (
            bare.num_epochs, bare.batch_size, bare.torch_threads) == (50, 32, 1)  # fmt: skip
    assert "running the embedded default run" in caplog.text
    assert parse_args(["--method", "coop"]).num_epochs is None  # another experiment: its preset decides


def test_the_preset_says_what_it_sets(caplog):
    from peft_vlprompt.training.presets import Preset, apply_preset

    args = parse_args(["--method", "coop", "--lr", "0.1"])
    caplog.set_level(logging.INFO)
    apply_preset(args, "coop", Preset(200, 0.002, 32, {"n_ctx": 16}, source="CoOp yaml"))
    assert (args.num_epochs, args.lr, args.batch_size) == (200, 0.1, 32)
    assert "coop preset (CoOp yaml) sets num_epochs=200, batch_size=32; kept: lr=0.1 (command line)" in caplog.text


# -- item 21: --help and command-line errors answer before torch is imported ---------------------------------------
PROBE = """
import runpy, sys
sys.argv = ["examples/train.py", *sys.argv[1:]]
try:
    runpy.run_path("examples/train.py", run_name="__main__")
except SystemExit as e:
    print("exit", e.code, "torch imported:", "torch" in sys.modules)
"""


@pytest.mark.parametrize(
    "argv,expected",
    [
        (["--help"], "exit 0"),
        (["--lr", "-5"], "`lr` must be > 0, got -5.0"),
        (["--num_epochs", "three"], "invalid int value: 'three'"),
        (["--model", "/nonexistent"], "`model` folder /nonexistent does not exist"),
        (["--method", "dpl"], "method 'dpl' has no preset adapter"),
    ],
)
def test_help_and_argument_errors_need_no_torch(argv, expected):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], cwd=ROOT, capture_output=True, text=True, env=env)
    output = done.stdout + done.stderr
    assert expected in output and "torch imported: False" in output, output


# -- item 22: a run prints nothing about other libraries' internals ------------------------------------------------
@pytest.mark.slow
def test_a_run_is_free_of_third_party_noise(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    argv = ["--max_train_steps", "1", "--no_eval_zero_shot", "--checkpointing_steps", "1", "--output_dir",
            str(tmp_path / "run")]  # fmt: skip
    done = subprocess.run([sys.executable, "examples/train.py", *argv], cwd=ROOT, capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for noise in ("requires torchvision", "is_gradient_checkpointing", "Flattening the indices", "[RANK 0]",
                  "Saving current state", "FutureWarning", "UserWarning"):  # fmt: skip
        assert noise not in done.stderr, noise
    assert "wrote results:" in done.stderr and "hm" in done.stderr  # our own log lines are kept


def test_a_local_adapter_folder_without_weights_is_named(tmp_path):
    from peft import PeftModel, get_peft_model

    from tests.tiny import tiny_clip

    get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4)).save_pretrained(str(tmp_path))
    (tmp_path / "adapter_model.safetensors").unlink()
    with pytest.raises(ValueError, match=rf"adapter folder {tmp_path} has no adapter_model\.safetensors"):
        PeftModel.from_pretrained(tiny_clip(), str(tmp_path))
