"""Model cards and uploads: metadata round-trips through `ModelCard.load`, the upload sends exactly the three files.

Uploads are intercepted with a fake `HfApi` (nothing leaves the machine); the download side is in
`test_hub_download.py`.
"""

import json
import re
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import get_peft_model
from safetensors.torch import load_file

from peft_vlprompt import CoOpConfig
from peft_vlprompt.hub import METHOD_CARDS, push_prompts, render_card, save_prompts_with_card
from peft_vlprompt.hub import cards as cards_module
from peft_vlprompt.hub.methods import BIBTEX
from tests.tiny import tiny_clip

BASE2NEW = {
    "method": "coop",
    "dataset": "caltech101",
    "protocol": "base2new",
    "base_accuracy": 81.25,
    "new_accuracy": 70.5,
    "hm": 75.49,
    "zero_shot": {"base_accuracy": 70.0, "new_accuracy": 74.0, "hm": 71.95},
    "seed": 1,
    "shots": 16,
}
CTX_KEY = "base_model.model.text_model.embeddings.token_embedding.coop_ctx"


def coop_model(**config):
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4, **config))
    torch.manual_seed(5)
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
    return model


class FakeApi:
    """Records `create_repo` / `upload_folder` calls and what the uploaded folder held at upload time."""

    def __init__(self, canonical_repo_id=None):
        self.canonical_repo_id = canonical_repo_id
        self.calls = []
        self.files = {}

    def create_repo(self, repo_id, **kwargs):
        self.calls.append(("create_repo", repo_id, kwargs))
        return type("RepoUrl", (), {"repo_id": self.canonical_repo_id or repo_id})()

    def upload_folder(self, *, repo_id, folder_path, **kwargs):
        self.calls.append(("upload_folder", repo_id, kwargs))
        root = Path(folder_path)
        self.files = {p.relative_to(root).as_posix(): p.read_bytes() for p in root.rglob("*") if p.is_file()}
        return "commit-info"


def test_push_uploads_exactly_the_adapter_and_our_card(tmp_path):
    model = coop_model()
    api = FakeApi()
    training_config = {"lr": 0.002, "epochs": 2, "hub_token": "hf_SECRET123", "output_dir": tmp_path}
    result = push_prompts(
        model,
        "me/tiny-coop",
        results=BASE2NEW,
        training_config=training_config,
        private=True,
        api=api,
        base_model="me/tiny-clip",
    )
    assert result == "commit-info"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2]["private"] is True and api.calls[0][2]["exist_ok"] is True
    assert api.calls[1][1] == "me/tiny-coop"
    assert sorted(api.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]

    (tmp_path / "up").mkdir()
    for name, data in api.files.items():
        (tmp_path / "up" / name).write_bytes(data)
    saved = load_file(tmp_path / "up" / "adapter_model.safetensors")
    assert list(saved) == [CTX_KEY]
    assert torch.equal(saved[CTX_KEY], model.base_model.model.text_model.embeddings.token_embedding.coop_ctx.default)
    config = json.loads(api.files["adapter_config.json"])
    assert config["peft_type"] == "COOP" and config["base_model_name_or_path"] == "me/tiny-clip"
    assert model.peft_config["default"].base_model_name_or_path is None  # restored after saving

    readme = api.files["README.md"].decode()
    assert "hf_SECRET123" not in readme and "hub_token" not in readme
    card = ModelCard.load(tmp_path / "up" / "README.md")
    data = card.data
    assert data.library_name == "peft"  # not transformers' push_to_hub card
    assert data.base_model == "me/tiny-clip"
    assert data.pipeline_tag == "zero-shot-image-classification"
    assert data.datasets == ["caltech101"]
    assert {"clip", "prompt-learning", "peft_vlprompt", "coop"} <= set(data.tags)
    got = {(r.dataset_type, r.metric_name, r.metric_type): r.metric_value for r in data.eval_results}
    assert got == {
        ("caltech101", "Base accuracy", "accuracy"): 81.25,
        ("caltech101", "New accuracy", "accuracy"): 70.5,
        ("caltech101", "Harmonic mean (base/new)", "harmonic_mean"): 75.49,
    }
    assert data.model_name == "tiny-coop"
    assert '"me/tiny-coop"' in card.text and "PeftModel.from_pretrained(base_model, " in card.text
    # the zero-shot numbers are shown for comparison, never claimed as this adapter's results
    assert "| caltech101 | Base accuracy | 81.25 | 70.00 |" in card.text
    assert "@article{zhou2022coop" in card.text


def test_push_uses_the_canonical_repo_id_returned_by_create_repo():
    api = FakeApi(canonical_repo_id="someone/tiny-coop")
    push_prompts(coop_model(), "tiny-coop", api=api, base_model="me/tiny-clip")
    assert api.calls[1][1] == "someone/tiny-coop"
    assert '"someone/tiny-coop"' in api.files["README.md"].decode()


def test_card_tolerates_missing_and_odd_result_keys(tmp_path):
    results = {"accuracy": 63.5, "per_class_accuracy": [50, 77], "notes": "x", "seed": None}
    card = save_prompts_with_card(coop_model(), tmp_path, results=results, dataset="dtd", base_model="me/tiny-clip")
    data = ModelCard.load(tmp_path / "README.md").data
    assert [(r.dataset_type, r.metric_type, r.metric_value) for r in data.eval_results] == [("dtd", "accuracy", 63.5)]
    assert "zero-shot CLIP" not in card.text  # no zero-shot numbers were given
    empty = save_prompts_with_card(coop_model(), tmp_path / "empty")
    assert empty.data.eval_results is None and empty.data.datasets is None
    assert "No evaluation results were recorded" in empty.text
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]  # no staging folder left behind


def test_class_specific_card_lists_one_name_per_trained_class(tmp_path):
    card = render_card(coop_model(class_specific=True, n_classes=3), base_model="me/tiny-clip")
    assert 'classnames = ["class_0", "class_1", "class_2"]  # in training label order' in card.text
    assert "class-specific context for exactly 3 classes" in card.text


@pytest.mark.parametrize("method", [*METHOD_CARDS, "some_future_method"])
def test_every_method_renders_its_family_card(monkeypatch, method):
    monkeypatch.setattr(cards_module, "method_of", lambda config: method)
    card = render_card(coop_model(), results=BASE2NEW, base_model="me/tiny-clip")
    info = METHOD_CARDS.get(method)
    assert method in card.data.tags
    for section in ("## How it works", "## Usage", "## Results", "## Limitations", "## Citation"):
        assert section in card.text
    cited = re.findall(r"^@\w+\{(\w+),", card.text, flags=re.M)
    expected_keys = [re.match(r"@\w+\{(\w+),", BIBTEX[p]).group(1) for p in info.papers] if info else []
    assert cited == expected_keys
    family_marker = {
        "coop_family": "placeholder words of the prompt",
        "deep_prompt": "prompt tokens inside the encoder layers",
        "dpl": "key/value-only (prefix-style) prompts",
    }
    marker = family_marker.get(info.family if info else "generic", f"trained with the `{method}` method")
    assert marker in card.text


def test_bibtex_entries_are_well_formed():
    for key, entry in BIBTEX.items():
        assert entry.count("{") == entry.count("}"), key
        fields = set(re.findall(r"^\s+(\w+)\s*=", entry, flags=re.M))
        assert {"title", "author", "year"} <= fields, key
        assert "pages" not in fields, key


def test_cards_refuse_models_that_are_not_peft_vlprompt_adapters():
    with pytest.raises(TypeError, match="must be a peft `PeftModel`"):
        render_card(tiny_clip())


def test_cli_renders_the_same_card_from_a_saved_folder_and_pushes_it(tmp_path, monkeypatch):
    from peft_vlprompt.hub import __main__ as cli

    model = coop_model()
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "results.json").write_text(json.dumps(BASE2NEW))
    output = cli.main(
        [str(tmp_path / "adapter"), "--results", str(tmp_path / "results.json"), "--base-model", "me/tiny-clip"]
        + ["--repo-id", "me/tiny-coop", "--output", str(tmp_path / "cards" / "tiny-coop.md")]
    )
    from_folder = ModelCard.load(output)
    from_model = render_card(model, repo_id="me/tiny-coop", results=BASE2NEW, base_model="me/tiny-clip")
    assert from_folder.content == from_model.content
    assert "(128 parameters, 1 tensor)" in from_folder.text  # 4 context vectors x width 32

    api = FakeApi()
    monkeypatch.setattr(cli, "HfApi", lambda: api)
    cli.main([str(tmp_path / "adapter"), "--push", "--repo-id", "me/tiny-coop", "--base-model", "me/tiny-clip"])
    assert sorted(api.files) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads(api.files["adapter_config.json"])["base_model_name_or_path"] == "me/tiny-clip"
    assert api.files["adapter_model.safetensors"] == (tmp_path / "adapter" / "adapter_model.safetensors").read_bytes()


def test_cross_dataset_results_and_the_resolved_template(tmp_path):
    # the layout the training loop writes for cross_dataset / domain_generalization runs
    results = {
        "method": "coop",
        "dataset": "imagenet",
        "protocol": "cross_dataset",
        "accuracy": 71.5,
        "target_accuracy": {"caltech101": 93.1, "dtd": 44.0},
        "average_target_accuracy": 68.55,
        "zero_shot": {"accuracy": 66.7, "target_accuracy": {"caltech101": 92.9, "dtd": 44.5}},
        "template": "a photo of a {}, a type of texture.",
    }
    training_config = {"template": "coop_templates", "dataset": "imagenet"}  # a table name, not a template
    save_prompts_with_card(
        coop_model(), tmp_path, results=results, training_config=training_config, base_model="me/tiny-clip"
    )
    card = ModelCard.load(tmp_path / "README.md")
    got = {(r.dataset_type, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert got == {("imagenet", "accuracy"): 71.5, ("caltech101", "accuracy"): 93.1, ("dtd", "accuracy"): 44.0}
    assert "| dtd | Accuracy | 44.00 | 44.50 |" in card.text
    assert "| average over targets | Accuracy | 68.55 |  |" in card.text  # table only, no zero-shot average given
    assert 'template="a photo of a {}, a type of texture."' in card.text
    assert "coop_templates" in card.text  # still listed in the training configuration
