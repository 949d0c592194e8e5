"""`examples/toy/linear_probe.py` as a command: one row per toy domain and extra dataset, any `--model`, the zero-shot
column equal to a hand-written zero-shot CLIP on the same test images, the table and JSON written by `--output`, and
unknown domains refused before any model is loaded. (The probe's fit itself: tests/test_examples.py.)"""

import json

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPImageProcessor, CLIPModel

from tests.test_examples import _load_example
from tests.test_training_fixtures import CLASSNAMES, register_tiny_dataset, save_tiny_model, tiny_image
from tests.tiny import tokenizer


def hand_zero_shot(model_dir) -> float:
    """Zero-shot accuracy (%) of the saved tiny CLIP on the tiny dataset's test split, from the towers directly."""
    clip = CLIPModel.from_pretrained(model_dir).eval()
    texts = [f"a photo of a {name}." for name in CLASSNAMES]  # the dataset's template
    images = [tiny_image(label, i, "test") for label in range(len(CLASSNAMES)) for i in range(3)]
    labels = torch.arange(len(CLASSNAMES)).repeat_interleave(3)
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        text = clip.text_projection(
            clip.text_model(**tokenizer()(texts, padding=True, return_tensors="pt")).pooler_output
        )
        image = clip.visual_projection(clip.vision_model(pixel_values=pixels).pooler_output)
    pred = (F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).T).argmax(-1)
    return 100.0 * pred.eq(labels).float().mean().item()


def test_rows_per_domain_and_dataset_with_any_model(tmp_path):
    model_dir = save_tiny_model(tmp_path / "model")
    script = _load_example("examples/toy/linear_probe.py")
    dataset = register_tiny_dataset()
    argv = ["--model", str(model_dir), "--domains", "night", "--datasets", dataset, "--subsample", "all",
            "--shots", "2", "--steps", "0", "--output", str(tmp_path / "out" / "probe.md")]  # fmt: skip
    results = script.main(argv)
    assert [(r["domain"], r["dataset"]) for r in results] == [("night", "toy_objects_night"), (dataset, dataset)]
    tiny = results[1]
    assert tiny["zero_shot"] == pytest.approx(hand_zero_shot(model_dir), abs=1e-4)
    assert all(r["probe_test"] == r["zero_shot"] for r in results)  # 0 steps: the probe is the zero-shot classifier
    saved = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert saved["results"] == results and saved["arguments"]["model"] == str(model_dir)
    table = (tmp_path / "out" / "probe.md").read_text()
    assert "| domain | zero-shot | probe | probe - zero-shot |" in table
    assert f"| {dataset} | {tiny['zero_shot']:.1f} | {tiny['zero_shot']:.1f} | +0.0 |" in table
    assert f"on `{model_dir}`." in table and "--domains night" in table


def test_unknown_domain_or_dataset_is_refused_before_loading(tmp_path):
    script = _load_example("examples/toy/linear_probe.py")
    missing_model = str(tmp_path / "no_model")  # loading it would fail differently
    with pytest.raises(ValueError, match=r"`domains` \['dusk'\] are not toy domains; choose from \['photo'"):
        script.main(["--model", missing_model, "--domains", "night", "dusk"])
    with pytest.raises(ValueError, match="Unknown dataset 'toy_nothing'"):
        script.main(["--model", missing_model, "--datasets", "toy_nothing"])
