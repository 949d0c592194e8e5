"""examples/: `accelerate launch` with 2 CPU processes equals one process; the aggregation script; the benchmark."""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from peft_vlprompt.training import main
from tests._ddp import free_port
from tests.test_training_fixtures import make_imagefolder, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, monkeypatch):
    """ProGrad (its general direction is all-reduced) on 2 gloo ranks x batch 2 == 1 process x batch 4."""
    model_dir = save_tiny_model(tmp_path / "clip")
    data_dir = make_imagefolder(tmp_path / "images")
    common = ["--method", "prograd", "--dataset", "imagefolder", "--data_dir", str(data_dir), "--model",
              str(model_dir), "--protocol", "base2new", "--shots", "4", "--num_epochs", "2", "--warmup_epochs", "0",
              "--no_eval_zero_shot", "--eval_batch_size", "8"]  # fmt: skip
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1",
               OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")  # fmt: skip
    # `--multi_gpu` makes accelerate start 2 processes (torchrun); without a GPU the loop falls back to CPU + gloo.
    # (`--cpu --num_processes 2` would start a single process in accelerate 1.15 unless MPI is configured.)
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
              str(free_port())]  # fmt: skip
    ddp_out = tmp_path / "ddp"
    proc = subprocess.run(
        [*launch, str(ROOT / "examples" / "train.py"), *common, "--batch_size", "2", "--output_dir", str(ddp_out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_single"))
    single_out = tmp_path / "single"
    single = main([*common, "--batch_size", "4", "--output_dir", str(single_out)])
    ddp = json.loads((ddp_out / "all_results.json").read_text())
    assert ddp["num_processes"] == 2 and single["num_processes"] == 1
    assert ddp["global_step"] == single["global_step"] == 4  # 8 base images / global batch 4, 2 epochs
    assert ddp["base_accuracy"] == single["base_accuracy"] and ddp["new_accuracy"] == single["new_accuracy"]
    a = load_file(str(ddp_out / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(single_out / "adapter" / "adapter_model.safetensors"))
    init = torch.zeros(1)
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=2e-6, rtol=1e-5)
        init = b[key]
    assert init.abs().sum() > 0


def _load_example(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_aggregate_results_mean_std_and_hm(tmp_path):
    aggregate = _load_example("examples/aggregate_results.py")
    runs = [  # two seeds of CoOp on one dataset, base2new; base 80/60, new 70/50
        {"method": "coop", "dataset": "dtd", "protocol": "base2new", "shots": 16, "seed": seed,
         "base_accuracy": b, "new_accuracy": n, "hm": 0.0,
         "zero_shot": {"base_accuracy": 50.0 + seed, "new_accuracy": 40.0, "hm": 0.0}}
        for seed, b, n in ((1, 80.0, 70.0), (2, 60.0, 50.0))
    ]  # fmt: skip
    for run in runs:
        folder = tmp_path / f"seed{run['seed']}"
        folder.mkdir()
        (folder / "all_results.json").write_text(json.dumps(run))
    text = aggregate.main([str(tmp_path), "--output", str(tmp_path / "table.md")])
    assert (tmp_path / "table.md").read_text() == text
    # mean 70 / 60, sample std sqrt(((80-70)^2 + (60-70)^2) / 1) = 14.14; HM of the means 2*70*60/130 = 64.62
    assert "| coop | 70.00 ± 14.14 | 60.00 ± 14.14 | 64.62 |" in text
    # zero-shot CLIP from the recorded numbers: base 51 / 52 -> 51.50 ± 0.71, new 40; HM 2*51.5*40/91.5 = 45.03
    assert "| zero-shot CLIP | 51.50 ± 0.71 | 40.00 ± 0.00 | 45.03 |" in text
    assert "### base2new, 16 shots (seeds 1, 2)" in text


def test_step_time_benchmark_runs_and_prints_ratios(capsys):
    bench = _load_example("examples/benchmarks/step_time.py")
    tiny = ["--classes", "6", "--batch", "2", "--steps", "1", "--text_width", "64", "--text_layers", "2",
            "--vision_width", "64", "--vision_layers", "2", "--image_size", "32", "--patch_size", "8"]  # fmt: skip
    results = bench.main([*tiny, "--methods", "prograd,restore"])
    assert set(results) == {"prograd", "restore"}
    assert set(results["prograd"]) == {"straightforward", "package", "shared", "package + cache", "shared + cache",
                                       "tokens"}  # fmt: skip
    assert "package + cache" not in results["restore"]  # the image tower is prompted: nothing to cache
    assert all(t > 0 for row in results.values() for k, (t, _) in row.items() if k != "tokens")
    assert results["prograd"]["tokens"][0] < 77
    out = capsys.readouterr().out
    assert "straightforward/this" in out and "package/shared" in out


def test_help_documents_every_argument():
    from peft_vlprompt.training import TrainArguments, parse_args

    fields = TrainArguments.__dataclass_fields__.values()
    assert all(f.metadata.get("help") for f in fields)
    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--help"])
    assert exit_info.value.code == 0


def test_linear_probe_starts_at_zero_shot_and_fits_its_shots():
    from peft_vlprompt.toy import load_toy_clip

    probe = _load_example("examples/toy/linear_probe.py")
    model, processor = load_toy_clip()
    untrained = probe.probe(model, processor, "toy_objects", probe.ProbeArguments(shots=1, steps=0))
    assert untrained["probe_test"] == untrained["zero_shot"]  # the class weights start as the zero-shot text features
    fitted = probe.probe(model, processor, "toy_objects", probe.ProbeArguments(shots=1, steps=200))
    assert fitted["zero_shot"] == untrained["zero_shot"] and fitted["probe_train"] == 100.0  # 24 images, 24 classes
