"""Loading shared prompts: `load_prompts`, and clear errors for a mismatched base model or a foreign adapter."""

import json

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import CLIPModel

from peft_vlprompt import CoOpConfig, PromptClassifier
from peft_vlprompt.hub import load_prompts, save_prompts_with_card
from tests.tiny import pixels, tiny_clip, tokenizer

CTX = "text_model.embeddings.token_embedding.coop_ctx"


def saved_coop(tmp_path):
    tiny_clip().save_pretrained(tmp_path / "base")
    model = get_peft_model(CLIPModel.from_pretrained(tmp_path / "base").eval(), CoOpConfig(n_ctx=4))
    torch.manual_seed(2)
    model.base_model.model.get_submodule(CTX)["default"].data.normal_()
    save_prompts_with_card(model, tmp_path / "adapter")
    return model


def test_load_prompts_restores_the_prompts_and_the_base_model(tmp_path):
    model = saved_coop(tmp_path)
    saved_ctx = model.base_model.model.get_submodule(CTX)["default"].detach()
    with torch.no_grad():
        expected = PromptClassifier(model, tokenizer(), ["cat", "dog", "bird"])(pixels())
    for clip in (tiny_clip(), None, str(tmp_path / "base")):  # a model, the recorded base, a path
        loaded = load_prompts(clip, tmp_path / "adapter")
        assert type(loaded) is PeftModel and not loaded.training
        assert not any(p.requires_grad for p in loaded.parameters())
        assert torch.equal(loaded.base_model.model.get_submodule(CTX)["default"], saved_ctx)
        # allclose, not equal: the saved base reloads with sdpa attention, tiny_clip() uses eager
        assert torch.allclose(
            PromptClassifier(loaded, tokenizer(), ["cat", "dog", "bird"])(pixels()), expected, atol=1e-5
        )
    trainable = load_prompts(tiny_clip(), tmp_path / "adapter", is_trainable=True)
    assert [n for n, p in trainable.named_parameters() if p.requires_grad] == [f"base_model.model.{CTX}.default"]


@pytest.mark.parametrize("loader", ["peft", "load_prompts"])
def test_a_mismatched_base_model_fails_with_both_shapes(tmp_path, loader):
    saved_coop(tmp_path)
    config = tiny_clip().config
    config.text_config.hidden_size = 48  # another CLIP architecture (text width 48 instead of 32)
    other = CLIPModel(config)
    with pytest.raises(ValueError) as info:
        if loader == "peft":
            PeftModel.from_pretrained(other, tmp_path / "adapter")
        else:
            load_prompts(other, tmp_path / "adapter")
    message = str(info.value)
    assert f"`{CTX}` has shape (4, 32) in the saved adapter but (4, 48) in this model" in message
    assert "text width 48" in message and str(tmp_path / "base") in message


def test_load_prompts_refuses_adapters_of_other_methods(tmp_path):
    (tmp_path / "lora").mkdir()
    (tmp_path / "lora" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
    with pytest.raises(ValueError, match="'lora' adapter, which is not a peft_vlprompt method"):
        load_prompts(tiny_clip(), tmp_path / "lora")
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "adapter_config.json").write_text(json.dumps({"peft_type": "SOME_FUTURE_METHOD"}))
    with pytest.raises(ValueError, match="'some_future_method' adapter"):
        load_prompts(tiny_clip(), tmp_path / "future")
    with pytest.raises(TypeError, match="unexpected keyword arguments"):
        load_prompts(tiny_clip(), tmp_path / "future", adapter_nam="x")
