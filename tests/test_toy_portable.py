"""Adapters trained on the shipped toy CLIP are portable, and a local adapter's card snippet runs as written
(issue 11, item 19)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from peft import get_peft_model

from peft_vlprompt import CoOpConfig
from peft_vlprompt.hub import render_card
from peft_vlprompt.model_refs import TOY_CLIP_NAME, portable_model_reference, resolve_model_reference
from peft_vlprompt.toy import load_toy_clip, render, toy_clip_path
from peft_vlprompt.training.build import load_clip

ROOT = Path(__file__).resolve().parents[1]


def fresh_python(code: str, cwd: Path) -> str:
    """Run `code` in a new interpreter from `cwd`, offline, with the checkout importable only as installed."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def toy_adapter(tmp_path_factory):
    clip, _ = load_toy_clip()
    model = get_peft_model(clip, CoOpConfig(n_ctx=4))
    folder = tmp_path_factory.mktemp("toy") / "adapter"
    model.save_pretrained(folder)
    return folder


def test_the_adapter_records_the_portable_name_not_a_path(toy_adapter):
    config = json.loads((toy_adapter / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "peft-vlprompt/toy-clip" == TOY_CLIP_NAME
    for name in ("adapter_config.json", "adapter_model.safetensors"):  # what loading reads never names this checkout
        assert str(ROOT) not in (toy_adapter / name).read_bytes().decode("utf-8", "replace"), name
    # the name and any path to the installed toy CLIP map to each other; other names pass through
    assert resolve_model_reference(TOY_CLIP_NAME) == toy_clip_path()
    assert portable_model_reference(toy_clip_path() + "/") == TOY_CLIP_NAME
    assert resolve_model_reference("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert portable_model_reference("openai/clip-vit-base-patch16") == "openai/clip-vit-base-patch16"
    assert load_clip(TOY_CLIP_NAME)[0].name_or_path == toy_clip_path()  # `examples/train.py --model` accepts it


@pytest.mark.slow  # two fresh interpreters (torch + transformers imports)
def test_auto_peft_model_and_the_card_snippet_run_elsewhere(toy_adapter, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # AutoPeftModel follows base_model_name_or_path: the name resolves to the installed toy CLIP, offline
    out = fresh_python(
        "import peft_vlprompt\n"
        "from peft import AutoPeftModel\n"
        f"model = AutoPeftModel.from_pretrained({str(toy_adapter)!r})\n"
        "print(type(model).__name__, model.peft_config['default'].base_model_name_or_path)\n",
        elsewhere,
    )
    assert out.split() == ["PeftModel", toy_clip_path()]
    # the card of a local adapter (what the training loop writes next to it) runs as written
    card = str(render_card(toy_adapter, classnames=["red circle", "blue square"], warn_local_base=False))
    snippet = card.split("```python\n")[1].split("```")[0]
    assert "your-username" not in snippet and str(ROOT) not in card
    assert f'"{toy_adapter}"' in snippet and "toy_clip_path()" in snippet
    assert "base_model:" not in card.split("---")[1]  # the name is not a Hub repository: no Hub metadata link
    render(0, "photo", np.random.default_rng(0)).save(elsewhere / "image.jpg")  # the image the snippet opens
    out = fresh_python(snippet, elsewhere)
    assert out.strip() in ("['red circle']", "['blue square']")


def test_the_training_runs_card_loads_the_adapter_from_where_it_was_written(tmp_path, monkeypatch):
    from peft_vlprompt.training import main
    from tests.test_training_fixtures import base_args, save_tiny_model

    model_dir = save_tiny_model(tmp_path / "clip")
    monkeypatch.chdir(tmp_path)  # a relative --output_dir, as users type it
    main(base_args(model_dir, Path("runs/x"), "coop", "--max_train_steps", "1"))
    card = (tmp_path / "runs" / "x" / "adapter" / "README.md").read_text()
    snippet = card.split("```python\n")[1].split("```")[0]
    adapter = tmp_path / "runs" / "x" / "adapter"
    assert f'PeftModel.from_pretrained(base_model, "{adapter}")' in snippet
    assert f'base = "{model_dir}"' in snippet
