"""`examples/toy/feature_shift.py`: the numbers it writes are `diagnostics.feature_shift` on the inputs it promises
(the run's class prompts, the first test images of each trained class), recomputed here from the saved adapters with
the tokenizer and the image processor directly; averaged over seeds; refused before any work when a run is missing."""

import importlib.util
import json

import pytest
import torch
from peft import PeftModel
from transformers import CLIPImageProcessor, CLIPModel

from peft_vlprompt.diagnostics import feature_shift
from peft_vlprompt.training import main as train_main
from tests.test_examples import _load_example
from tests.test_training_fixtures import CLASSNAMES, base_args, save_tiny_model, tiny_image
from tests.tiny import tokenizer

RUNS = [("ivlp", 1), ("ivlp", 2), ("restore", 1)]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shift")
    model_dir = save_tiny_model(root / "model")
    for method, seed in RUNS:
        out = root / "runs" / "base2new" / method / f"seed{seed}"
        argv = base_args(model_dir, out, method, "--no_eval_zero_shot", "--torch_threads", "1")
        argv[argv.index("--seed") + 1] = str(seed)
        argv[argv.index("--num_epochs") + 1] = "1"
        train_main(argv)
    return root, model_dir


def direct_shift(model_dir, run_dir, n_images):
    """feature_shift of one saved adapter on the base classes' prompts and first `n_images` test images."""
    model = PeftModel.from_pretrained(CLIPModel.from_pretrained(model_dir), str(run_dir / "adapter")).eval()
    summary = json.loads((run_dir / "all_results.json").read_text())
    base = CLASSNAMES[:2]  # base = first half of the sorted labels
    texts = model.peft_config["default"].prompt_texts(base, summary["template"])
    ids = tokenizer()(texts, padding=True, return_tensors="pt")["input_ids"]
    images = [tiny_image(label, i, "test") for label in range(len(base)) for i in range(n_images)]
    pixels = CLIPImageProcessor.from_pretrained(model_dir)(images=images, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        return {k: v.tolist() for k, v in feature_shift(model, ids, pixels).items()}


def test_numbers_are_the_diagnostics_of_the_saved_adapters_averaged_over_seeds(runs, tmp_path):
    root, model_dir = runs
    script = _load_example("examples/toy/feature_shift.py")
    out = tmp_path / "results"
    plot = importlib.util.find_spec("matplotlib") is not None  # CI's [test] extra has none: JSON only there
    args = ["--runs_dir", str(root / "runs"), "--images_per_class", "2", "--batch_size", "3",
            "--json_file", str(out / "shift.json"), "--plot_file", str(out / "shift.png")]  # fmt: skip
    script.main([*args, "--methods", "ivlp", "--seeds", "1", "2", *([] if plot else ["--no_plot"])])
    saved = json.loads((out / "shift.json").read_text())
    runs_dir = root / "runs" / "base2new" / "ivlp"
    expected = [direct_shift(model_dir, runs_dir / f"seed{s}", 2) for s in (1, 2)]
    ivlp = saved["methods"]["ivlp"]
    for tower, layers in (("text", 2), ("vision", 2)):
        assert len(ivlp[tower]["mean"]) == layers  # the tiny model's blocks, read from the model
        for s, direct in zip(("1", "2"), expected):
            assert ivlp[tower]["per_seed"][s] == pytest.approx(direct[tower], rel=1e-5, abs=1e-7)
        mean = [(a + b) / 2 for a, b in zip(expected[0][tower], expected[1][tower])]
        assert ivlp[tower]["mean"] == pytest.approx(mean, rel=1e-5, abs=1e-7)
        assert all(v > 0 for v in ivlp[tower]["mean"])  # IVLP prompts both towers
    assert saved["test_images"] == {"bird": 2, "cat": 2} and saved["dataset"] == "tiny_training_shapes"
    assert "--methods ivlp --seeds 1 2" in saved["command"]
    if plot:
        assert (out / "shift.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # two methods, one seed each; restore's numbers are its own adapter's
    script.main([*args, "--methods", "ivlp", "restore", "--seeds", "1", "--no_plot"])
    saved = json.loads((out / "shift.json").read_text())
    direct = direct_shift(model_dir, root / "runs" / "base2new" / "restore" / "seed1", 2)
    assert saved["methods"]["restore"]["vision"]["mean"] == pytest.approx(direct["vision"], rel=1e-5, abs=1e-7)
    assert saved["methods"]["restore"]["text"]["std"] == [0.0, 0.0]
    # the learning rate each method's runs recorded travels with its numbers (the plot's legend shows it)
    for method in ("ivlp", "restore"):
        recorded = json.loads((root / "runs" / "base2new" / method / "seed1" / "all_results.json").read_text())["lr"]
        assert saved["methods"][method]["lr"] == [recorded]


def test_a_missing_run_is_refused_before_any_work(tmp_path):
    script = _load_example("examples/toy/feature_shift.py")
    done = tmp_path / "runs" / "base2new" / "ivlp" / "seed1"
    (done / "adapter").mkdir(parents=True)
    (done / "adapter" / "adapter_config.json").write_text("{}")
    (done / "all_results.json").write_text('{"dataset": "toy_objects"}')
    out = tmp_path / "shift.json"
    common = ["--runs_dir", str(tmp_path / "runs"), "--json_file", str(out), "--no_plot"]
    with pytest.raises(FileNotFoundError, match=r"in: \S*restore/seed1; run examples/toy/methods_table.py"):
        script.main([*common, "--methods", "ivlp", "restore", "--seeds", "1"])
    with pytest.raises(ValueError, match="`--images_per_class` must be >= 1, got 0"):
        script.main([*common, "--methods", "ivlp", "--seeds", "1", "--images_per_class", "0"])
    assert not out.exists()
