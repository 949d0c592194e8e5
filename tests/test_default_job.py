"""The README's main job (`examples/train.py` with no arguments) on the embedded toy world, with a tiny step count."""

import json
import runpy
import sys
from pathlib import Path

from accelerate.state import GradientState
from huggingface_hub import ModelCard

from peft_vlprompt.training import DEFAULT_RUN, parse_args

ROOT = Path(__file__).resolve().parents[1]


def test_default_job_runs_prograd_on_the_toy_base_to_new_task(tmp_path, monkeypatch, caplog):
    # the defaults, plus only a tiny step budget and a scratch output folder
    argv = ["examples/train.py", "--max_train_steps", "2", "--output_dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", argv)
    caplog.set_level("INFO")
    runpy.run_path(str(ROOT / "examples" / "train.py"), run_name="__main__")
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["method"] == "prograd" and results["dataset"] == DEFAULT_RUN["dataset"] == "toy_objects_night"
    assert results["protocol"] == "base2new" and results["global_step"] == 2
    assert results["num_epochs"] == DEFAULT_RUN["num_epochs"]  # --output_dir/--max_train_steps keep the default run
    for key in ("base_accuracy", "new_accuracy", "hm"):
        assert 0.0 <= results[key] <= 100.0 and 0.0 <= results["zero_shot"][key] <= 100.0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    # the adapter folder carries our card (not peft's empty template), with this run's results in its model-index
    card = ModelCard.load(tmp_path / "run" / "adapter" / "README.md")
    assert card.data.library_name == "peft" and "prompt-learning" in card.data.tags and "prograd" in card.data.tags
    scores = {r.metric_name: r.metric_value for r in card.data.eval_results}
    assert scores and all(round(v, 2) in {round(results[k], 2) for k in ("base_accuracy", "new_accuracy", "hm")}
                          for v in scores.values())  # fmt: skip
    assert "More Information Needed" not in card.text
    # the run stopped inside its loader (--max_train_steps) and still left accelerate's GradientState clean
    assert not GradientState().in_dataloader
    assert "zero-shot" in caplog.text and "hm" in caplog.text  # the printed table: trained next to zero-shot


def test_flags_override_the_default_run_until_an_experiment_is_chosen():
    bare = parse_args([])
    assert (bare.method, bare.dataset, bare.num_epochs) == ("prograd", "toy_objects_night", DEFAULT_RUN["num_epochs"])
    tweaked = parse_args(["--seed", "3", "--train-crop-scale", "0.2", "1"])
    assert (tweaked.method, tweaked.num_epochs, tweaked.seed) == ("prograd", DEFAULT_RUN["num_epochs"], 3)
    assert tweaked.train_crop_scale == [0.2, 1.0] and tweaked.torch_threads == DEFAULT_RUN["torch_threads"]
    for flag in (["--method", "coop"], ["--dataset=toy_shapes"], ["--config", "found.json"]):
        own = parse_args(flag)
        assert own.num_epochs is None and own.torch_threads is None, flag  # the method preset decides
