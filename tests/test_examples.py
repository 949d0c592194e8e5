"""examples/: `accelerate launch` with 2 CPU processes equals one process; the aggregation script; the benchmark."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import datasets
import torch
from safetensors.torch import load_file

from peft_vlprompt.training import main
from tests.test_training_fixtures import make_imagefolder, save_tiny_model

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
