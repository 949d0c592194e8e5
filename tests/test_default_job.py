"""The README's main job (`examples/train.py` with no arguments) on the embedded toy world, with a tiny step count."""

import json
import runpy
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_default_job_runs_prograd_on_the_toy_base_to_new_task(tmp_path, monkeypatch, caplog):
    # the defaults, plus only a tiny step budget and a scratch output folder
    argv = ["examples/train.py", "--max_train_steps", "2", "--output_dir", str(tmp_path / "run")]
    monkeypatch.setattr(sys, "argv", argv)
    caplog.set_level("INFO")
    runpy.run_path(str(ROOT / "examples" / "train.py"), run_name="__main__")
    results = json.loads((tmp_path / "run" / "all_results.json").read_text())
    assert results["method"] == "prograd" and results["dataset"] == "toy_objects"
    assert results["protocol"] == "base2new" and results["global_step"] == 2
    for key in ("base_accuracy", "new_accuracy", "hm"):
        assert 0.0 <= results[key] <= 100.0 and 0.0 <= results["zero_shot"][key] <= 100.0
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert "zero-shot" in caplog.text and "hm" in caplog.text  # the printed table: trained next to zero-shot
