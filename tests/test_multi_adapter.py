"""Several adapters on one model: switching, deleting and loading under `PromptClassifier`, and CoOp-family siblings
(KgCoOp, ProGrad-CoOp) beside a CoOp adapter. Logits are checked against the hand re-statement of CoOp's text path."""

import json
import warnings

import pytest
import torch
from peft import PeftModel, get_peft_model

from peft_vlprompt import CoCoOpConfig, CoOpConfig, KgCoOpConfig, ProGradCoOpConfig, PromptClassifier
from peft_vlprompt.adapters import add_adapter, load_adapter
from peft_vlprompt.tuners.kgcoop import KgCoOpModel
from tests.test_coop import CLASSNAMES, reference_logits
from tests.tiny import pixels, tiny_clip, tokenizer


def contexts(model) -> dict:
    return model.base_model.model.text_model.embeddings.token_embedding.coop_ctx


def nudge(model, name: str, seed: int) -> torch.Tensor:
    """Move adapter `name`'s context away from its init (so adapters differ) and return a detached copy."""
    ctx = contexts(model)[name]
    with torch.no_grad():
        ctx.add_(0.05 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(seed)))
    return ctx.detach().clone()


def expected(ctx: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    return reference_logits(tiny_clip(), ctx, "end", images)


def two_coop_adapters():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4), adapter_name="a")
    model.add_adapter("b", CoOpConfig(n_ctx=4, ctx_init="a photo of a"))
    return model, {"a": nudge(model, "a", 1), "b": nudge(model, "b", 2)}


def test_set_adapter_switches_the_classifier_and_its_cached_text_features():
    model, ctx = two_coop_adapters()
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()
    images = pixels()
    assert not torch.allclose(expected(ctx["a"], images), expected(ctx["b"], images), atol=1e-3)
    for name in ("a", "b", "a", "b"):  # back and forth: a cache keyed without the adapter would answer stale
        model.set_adapter(name)
        assert model.active_adapters == [name]
        torch.testing.assert_close(clf(images), expected(ctx[name], images), atol=1e-5, rtol=0)
        assert clf.text_features() is clf.text_features()  # cached while the adapter stays


def test_deleting_the_active_adapter_falls_back_to_the_remaining_one():
    model, ctx = two_coop_adapters()
    model.set_adapter("b")
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()
    images = pixels()
    torch.testing.assert_close(clf(images), expected(ctx["b"], images), atol=1e-5, rtol=0)  # "b" cached
    with pytest.warns(UserWarning, match="Adapter b was active"):
        model.delete_adapter("b")
    assert model.active_adapters == ["a"] and list(model.peft_config) == ["a"]
    assert "b" not in contexts(model)
    torch.testing.assert_close(clf(images), expected(ctx["a"], images), atol=1e-5, rtol=0)


def test_load_adapter_of_the_same_method_then_switch(tmp_path):
    saved, ctx = two_coop_adapters()
    saved.save_pretrained(tmp_path)  # non-default adapters go to tmp_path/<name>
    model = PeftModel.from_pretrained(tiny_clip(), tmp_path / "b", adapter_name="b")
    model.load_adapter(tmp_path / "a", adapter_name="a")
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()
    images = pixels()
    for name in ("b", "a", "b"):
        model.set_adapter(name)
        torch.testing.assert_close(clf(images), expected(ctx[name], images), atol=1e-5, rtol=0)


def save_kgcoop(path, seed: int = 5) -> torch.Tensor:
    kg = get_peft_model(tiny_clip(), KgCoOpConfig(kg_weight=2.0, teacher_template="a photo of a {}, a pet."))
    ctx = nudge(kg, "default", seed)
    kg.save_pretrained(path)
    return ctx


def test_a_kgcoop_adapter_loads_beside_a_coop_adapter_and_keeps_its_config(tmp_path):
    kg_ctx = save_kgcoop(tmp_path / "kg")
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    coop_ctx = nudge(model, "default", 1)
    with pytest.raises(ValueError, match="different peft types"):  # peft's own rule, which `load_adapter` lifts
        model.load_adapter(tmp_path / "kg", adapter_name="knowledge")
    assert list(model.peft_config) == ["default"]

    load_adapter(model, tmp_path / "kg", adapter_name="knowledge")
    config = model.peft_config["knowledge"]
    assert isinstance(config, KgCoOpConfig) and config.kg_weight == 2.0
    assert config.teacher_template == "a photo of a {}, a pet."
    assert model.peft_type.value == "COOP"  # the model's own type is left as it was
    assert torch.equal(contexts(model)["knowledge"].detach(), kg_ctx)

    # each adapter's logits are those of that adapter alone (and of the hand reference)
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()
    images = pixels()
    alone = PeftModel.from_pretrained(tiny_clip(), tmp_path / "kg")
    assert isinstance(alone.base_model, KgCoOpModel)
    for name, ctx in (("knowledge", kg_ctx), ("default", coop_ctx), ("knowledge", kg_ctx)):
        model.set_adapter(name)
        logits = clf(images)
        torch.testing.assert_close(logits, expected(ctx, images), atol=1e-5, rtol=0)
        if name == "knowledge":
            torch.testing.assert_close(logits, PromptClassifier(alone, tokenizer(), CLASSNAMES).eval()(images))

    # saved back, the sibling is a KgCoOp adapter again
    model.save_pretrained(tmp_path / "both")
    assert json.loads((tmp_path / "both" / "knowledge" / "adapter_config.json").read_text())["peft_type"] == "KGCOOP"
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path / "both" / "knowledge")
    assert torch.equal(contexts(reloaded)["default"].detach(), kg_ctx)


def test_a_prograd_adapter_is_added_beside_and_trains_alone():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    add_adapter(model, "pg", ProGradCoOpConfig(n_ctx=6))
    model.set_adapter("pg")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["base_model.model.text_model.embeddings.token_embedding.coop_ctx.pg"]
    ctx = nudge(model, "pg", 3)
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    torch.testing.assert_close(logits, expected(ctx, images), atol=1e-5, rtol=0)


def test_methods_with_other_tensors_are_refused_naming_the_family():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    with pytest.raises(ValueError, match=r"cocoop adapter beside this model's coop.*coop, kgcoop, prograd_coop"):
        add_adapter(model, "c", CoCoOpConfig(n_ctx=4))
    assert list(model.peft_config) == ["default"]
    with warnings.catch_warnings():  # same method: plain peft behaviour, also through the helper
        warnings.simplefilter("error")
        add_adapter(model, "second", CoOpConfig(n_ctx=2))
    assert list(model.peft_config) == ["default", "second"]
