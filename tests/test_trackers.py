"""Results in the trackers (issue 15 item 2): every evaluation's accuracies (zero-shot CLIP at step 0, the trained
adapter at its last step; base/new/HM, or the source and each target dataset) go through `accelerator.log` next to
the training losses, read back here from tensorboard's event files; `--report_to` / `--tracker_project_name` are
validated before any work."""

import importlib.util
import json

import pytest

from peft_vlprompt.training import main, parse_args
from peft_vlprompt.training import trackers as trackers_module
from peft_vlprompt.training.trackers import check_trackers, evaluation_values
from tests._tensorboard import read_scalars
from tests.test_training_fixtures import register_tiny_dataset, save_tiny_model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_clip"))


def test_cross_dataset_accuracies_per_target_are_read_back_from_tensorboard(model_dir, tmp_path):
    tiny = register_tiny_dataset()
    out = tmp_path / "run"
    results = main(["--method", "coop", "--dataset", tiny, "--model", str(model_dir), "--output_dir", str(out),
                    "--protocol", "cross_dataset", "--eval_datasets", tiny, "--shots", "2", "--num_train_epochs", "1",
                    "--per_device_train_batch_size", "4", "--max_train_steps", "1", "--eval_batch_size", "16",
                    "--torch_threads", "1", "--with_tracking", "--report_to", "tensorboard",
                    "--tracker_project_name", "my_project"])  # fmt: skip
    assert json.loads((out / "all_results.json").read_text()) == results
    scalars = read_scalars(out / "my_project")  # the project name is the tensorboard run folder
    expected = {
        "eval/accuracy": (1, results["accuracy"]),
        f"eval/target_accuracy/{tiny}": (1, results["target_accuracy"][tiny]),
        "eval/average_target_accuracy": (1, results["average_target_accuracy"]),
        "zero_shot/accuracy": (0, results["zero_shot"]["accuracy"]),
        f"zero_shot/target_accuracy/{tiny}": (0, results["zero_shot"]["target_accuracy"][tiny]),
    }
    for tag, (step, value) in expected.items():
        assert scalars[tag] == [(step, pytest.approx(value, abs=1e-3))], tag


def test_evaluation_values_restated_by_hand():
    scores = {"base": {"accuracy": 80.0}, "new": {"accuracy": 60.0}}
    values = evaluation_values("base2new", scores, ["base", "new"], "eval")
    assert values == {"eval/base_accuracy": 80.0, "eval/new_accuracy": 60.0,
                      "eval/hm": pytest.approx(2 * 80 * 60 / 140, abs=1e-4)}  # fmt: skip
    scores = {"source": {"accuracy": 50.0}, "a": {"accuracy": 20.0}, "b": {"accuracy": 40.0}}
    values = evaluation_values("cross_dataset", scores, ["source", "a", "b"], "zero_shot")
    assert values == {"zero_shot/accuracy": 50.0, "zero_shot/target_accuracy/a": 20.0,
                      "zero_shot/target_accuracy/b": 40.0, "zero_shot/average_target_accuracy": 30.0}  # fmt: skip


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--with_tracking", "--report_to", "tensorbord"], r"`report_to` must be 'all' or comma-separated trackers"),
        (["--with_tracking", "--report_to", "tensorboard,"], r"`report_to` must be"),
        (["--tracker_project_name", "p"], r"`tracker_project_name`='p' would be ignored: it needs --with_tracking"),
        (["--report_to", "tensorboard"], r"`report_to`='tensorboard' would be ignored"),
    ],
)
def test_tracker_flags_are_validated_when_parsed(argv, match):
    with pytest.raises(ValueError, match=match):
        parse_args(argv)


def test_a_tracker_that_is_not_installed_is_named_before_any_work(tmp_path):
    missing = next(n for n in ("swanlab", "dvclive", "clearml", "aim", "comet_ml", "mlflow", "wandb", "trackio")
                   if importlib.util.find_spec(n) is None)  # fmt: skip
    args = parse_args(["--with_tracking", "--report_to", f"tensorboard,{missing}", "--output_dir", str(tmp_path)])
    assert args.trackers() == ["tensorboard", missing]
    with pytest.raises(ValueError, match=rf"{missing} not installed .*pip install {missing}"):
        check_trackers(args)
    check_trackers(parse_args(["--with_tracking", "--report_to", "tensorboard"]))  # installed with the test extra


def test_all_with_no_tracker_installed_is_refused(monkeypatch):
    monkeypatch.setattr(trackers_module, "TRACKER_PACKAGES", {"nonexistent": "no_such_package_xyz"})
    with pytest.raises(ValueError, match=r"'all' found no installed tracker.*pip install tensorboard"):
        check_trackers(parse_args(["--with_tracking"]))
