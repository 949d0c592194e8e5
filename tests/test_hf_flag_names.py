"""transformers' names of the common flags (issue 15 item 5): `--learning_rate`, `--num_train_epochs`,
`--per_device_train_batch_size` (aliases of ours), `--gradient_accumulation_steps`, `--seed`, `--output_dir`,
`--push_to_hub`, `--hub_model_id` (the same names); `examples/train.py args.json` read as `--config` is."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from peft_vlprompt.training import main, parse_args
from peft_vlprompt.training.args import COMMAND_LINE, CONFIG_FILE
from peft_vlprompt.training.inputs import apply_config_file
from tests.test_training_fixtures import register_tiny_dataset, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]

# transformers' flag -> (our field, a value given as text, the value expected)
HF_FLAGS = {
    "--learning_rate": ("lr", "0.0125", 0.0125),
    "--num_train_epochs": ("num_epochs", "7", 7),
    "--per_device_train_batch_size": ("batch_size", "5", 5),
    "--per_device_eval_batch_size": ("eval_batch_size", "9", 9),
    "--gradient_accumulation_steps": ("gradient_accumulation_steps", "3", 3),
    "--seed": ("seed", "11", 11),
    "--output_dir": ("output_dir", "some/dir", "some/dir"),
    "--model_name_or_path": ("model", "openai/clip-vit-base-patch16", "openai/clip-vit-base-patch16"),
}


@pytest.mark.parametrize("flag", list(HF_FLAGS))
def test_each_transformers_flag_sets_our_field(flag):
    name, text, value = HF_FLAGS[flag]
    args = parse_args(["--method", "coop", flag, text])
    assert getattr(args, name) == value
    assert args.sources[name] == COMMAND_LINE
    # the same value under both names is fine; different values are an error naming both
    if flag[2:] != name:
        assert getattr(parse_args(["--method", "coop", flag, text, f"--{name}", text]), name) == value
        with pytest.raises(ValueError, match=rf"`{flag[2:]}` is an alias of `{name}`"):
            parse_args(["--method", "coop", flag, text, f"--{name}", "1" if text != "1" else "2"])


def test_push_to_hub_and_hub_model_id_keep_their_names():
    args = parse_args(["--push_to_hub", "--hub_model_id", "me/coop-toy"])
    assert args.push_to_hub is True and args.hub_model_id == "me/coop-toy"


def test_aliases_are_validated_like_the_field():
    with pytest.raises(ValueError, match=r"`lr` must be > 0, got -1.0"):
        parse_args(["--learning_rate", "-1"])


def test_an_args_json_file_is_read_as_a_config_file(tmp_path):
    file = tmp_path / "args.json"
    file.write_text(json.dumps({"method": "coop", "learning_rate": 0.01, "num_train_epochs": 3, "seed": 4}))
    args = parse_args([str(file)])
    apply_config_file(args)
    assert (args.method, args.lr, args.num_epochs, args.seed) == ("coop", 0.01, 3, 4)
    assert args.sources["lr"] == args.sources["num_epochs"] == CONFIG_FILE
    # flags after the file win, as over --config
    args = parse_args([str(file), "--lr", "0.05"])
    apply_config_file(args)
    assert (args.lr, args.num_epochs) == (0.05, 3) and args.sources["lr"] == COMMAND_LINE


@pytest.mark.parametrize(
    "content,match",
    [
        ({"learning_rate": -0.5}, r"`config` file .*args.json: `lr` must be > 0, got -0.5"),
        ({"learning_rate": 0.1, "lr": 0.2}, r"`learning_rate` is an alias of `lr`.*in `config` file"),
        ({"learning_rte": 0.1}, r"not training arguments only \(unknown: \['learning_rte'\]\)"),
    ],
)
def test_an_args_json_file_is_validated_as_every_value(tmp_path, content, match):
    file = tmp_path / "args.json"
    file.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=match):
        apply_config_file(parse_args([str(file)]))


def test_an_args_json_file_and_config_together_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"give the arguments file .*args.json' or --config, not both"):
        parse_args([str(tmp_path / "args.json"), "--config", "x.json"])


def test_a_run_from_an_args_json_file(tmp_path):
    model_dir = save_tiny_model(tmp_path / "clip")
    file = tmp_path / "args.json"
    file.write_text(json.dumps({
        "method": "coop", "dataset": register_tiny_dataset(), "model_name_or_path": str(model_dir),
        "output_dir": str(tmp_path / "run"), "protocol": "few_shot", "shots": 2, "num_train_epochs": 1,
        "learning_rate": 0.004, "per_device_train_batch_size": 4, "max_train_steps": 1, "eval_zero_shot": False,
        "torch_threads": 1,
    }))  # fmt: skip
    results = main([str(file)])
    assert (results["lr"], results["batch_size"], results["global_step"]) == (0.004, 4, 1)
    assert json.loads((tmp_path / "run" / "all_results.json").read_text()) == results


def test_help_lists_the_transformers_names():
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "examples/train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                          env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    for flag in ("--learning_rate", "--num_train_epochs", "--per_device_train_batch_size", "--dataset_name",
                 "--train_dir", "--class_names_file", "--tracker_project_name"):  # fmt: skip
        assert flag in done.stdout, flag


def test_a_bad_args_json_file_is_refused_before_torch_is_imported(tmp_path):
    from tests.test_cli import PROBE

    file = tmp_path / "args.json"
    file.write_text(json.dumps({"method": "coop", "learning_rate": -1.0}))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", PROBE, str(file)], cwd=ROOT, capture_output=True, text=True, env=env)
    output = done.stdout + done.stderr
    assert "`lr` must be > 0, got -1.0" in output and "torch imported: False" in output, output
