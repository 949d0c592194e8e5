"""The training loop end to end on a tiny CLIP and tiny data: methods, resume, feature cache, schedule."""

import json
import math

import pytest
from safetensors.torch import load_file

from peft_vlprompt.training import dassl_lr, main
from tests.test_training_fixtures import base_args, save_tiny_model


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


def test_coop_trains_two_epochs_and_writes_results(model_dir, tmp_path, caplog):
    out = tmp_path / "coop"
    results = main(base_args(model_dir, out, "coop", "--shots", "8"))  # 8 shots > the 6 images per class
    assert "fewer than 8 images; used all of them" in caplog.text
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
