"""`feature_shift` against hand-computed per-block shifts from the independent reference forward."""

import copy

import pytest
import torch
from peft import get_peft_model, get_peft_model_state_dict

from peft_vlprompt import CoOpConfig
from peft_vlprompt.diagnostics import feature_shift
from peft_vlprompt.tuners.deep_prompt import DeepPromptConfig
from tests import reference_clip as ref
from tests.tiny import pixels, tiny_clip, tokenizer


def randomised(config):
    base = tiny_clip(0)
    reference = copy.deepcopy(base)
    model = get_peft_model(base, config)
    with torch.no_grad():
        for _, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    sd = {k.removeprefix("base_model.model."): v.detach() for k, v in get_peft_model_state_dict(model).items()}
    return reference, model, sd


def hand_shift(prompted, base, mask=None):
    out = []
    for p, b in zip(prompted[1:], base[1:]):
        p = p[:, : b.shape[1]]  # vision: CLS + patches only
        rel = torch.sqrt(((p - b) ** 2).sum(-1)) / torch.sqrt((b**2).sum(-1))
        out.append(rel.mean() if mask is None else rel[mask].mean())
    return torch.stack(out)


def test_deep_prompt_shift_with_padding_mask():
    reference, model, sd = randomised(DeepPromptConfig(text_lengths=[1, 2], vision_lengths=[2, 1]))
    texts = model.peft_config["default"].prompt_texts(["cat", "sea lion"], "{}")
    batch = tokenizer()(texts, padding=True, return_tensors="pt")
    ids, attn, pix = batch["input_ids"], batch["attention_mask"], pixels(3)
    text_p = {
        0: sd["text_model.embeddings.token_embedding.deep_prompt"],
        1: sd["text_model.encoder.layers.1.deep_prompt"],
    }
    vision_p = {0: sd["vision_model.embeddings.deep_prompt"], 1: sd["vision_model.encoder.layers.1.deep_prompt"]}
    with torch.no_grad():
        _, t_prompted = ref.text_forward(reference, ids, replace=text_p, attention_mask=attn)
        _, t_base = ref.text_forward(reference, ids, attention_mask=attn)
        _, v_prompted = ref.vision_forward(reference, pix, replace=vision_p)
        _, v_base = ref.vision_forward(reference, pix)
        got = feature_shift(model, ids, pix, attention_mask=attn)
    eot = (ids == 49407).int().argmax(-1)
    mask = (torch.arange(ids.shape[1])[None] <= eot[:, None]) & attn.bool()
    torch.testing.assert_close(got["text"], hand_shift(t_prompted, t_base, mask), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["vision"], hand_shift(v_prompted, v_base), atol=1e-5, rtol=1e-5)
    assert got["text"].shape == (2,) and got["vision"].shape == (2,) and (got["vision"] > 0).all()


def test_any_adapter_coop_moves_text_only_and_leaves_the_model_as_it_was():
    _, model, _ = randomised(CoOpConfig(n_ctx=2))
    ids = tokenizer()(["X X cat.", "X X dog."], padding=True, return_tensors="pt")["input_ids"]
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    shift = feature_shift(model, ids, pixels())
    assert (shift["text"] > 0).all()
    assert torch.equal(shift["vision"], torch.zeros(2))  # CoOp does not touch the vision tower
    assert shift["text"].requires_grad  # usable as a loss
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads
    assert not any(getattr(m, "_disable_adapters", False) for m in model.modules())
    only_vision = feature_shift(model, pixel_values=pixels())
    assert list(only_vision) == ["vision"]
    with pytest.raises(ValueError, match="needs `input_ids`, `pixel_values` or both"):
        feature_shift(model)
