"""Deep prompts (replace / prefix modes, MaPLe coupling, presets, PromptSRC config) against `reference_clip`."""

import copy
import re

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from torch import nn

from peft_vlprompt import PromptClassifier
from peft_vlprompt.tuners.deep_prompt import (
    DeepPromptConfig,
    PromptSRCConfig,
    deep_language_preset,
    ivlp_preset,
    maple_preset,
    promptsrc_preset,
    vpt_deep_preset,
)
from tests import reference_clip as ref
from tests.tiny import pixels, tiny_clip, tokenizer

CLASSES = ["cat", "dog", "sea lion"]  # different token counts, so the text batch is padded
TEMPLATE = "a photo of a {}."


def build(config, attn="eager", layers=3, seed=0):
    """(untouched copy of the base CLIP, peft model with every adapter tensor randomised to a visible scale)."""
    base = tiny_clip(seed, attn=attn, text_layers=layers, vision_layers=layers)
    reference = copy.deepcopy(base)
    model = get_peft_model(base, config)
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for _, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return reference, model


def text_ids(config, classes=CLASSES):
    texts = config.prompt_texts(classes, TEMPLATE)
    return tokenizer()(texts, padding=True, return_tensors="pt")


def learned(model):
    """Prompt tensors by (tower, kind, index) read from the saved adapter state (no wrapper is called)."""
    out = {}
    for key, value in get_peft_model_state_dict(model).items():
        tower = "text" if key.startswith("base_model.model.text_model") else "vision"
        match = re.search(r"layers\.(\d+)", key)
        index = int(match.group(1)) if match else 0
        kind = "prefix" if ".self_attn." in key else "replace"
        leaf = key.rsplit(".", 1)[-1]
        out[(tower, kind, index, leaf)] = value.detach()
    return out


def reference_prompts(model):
    """{"text"|"vision": {"replace"|"prefix": {index: (n, w)}}}, coupled vision prompts projected by hand."""
    tensors = learned(model)
    prompts = {t: {"replace": {}, "prefix": {}} for t in ("text", "vision")}
    for (tower, kind, index, leaf), value in tensors.items():
        if leaf == "deep_prompt":
            prompts[tower][kind][index] = value
    for (tower, kind, index, leaf), weight in tensors.items():
        if leaf == "weight":  # vision-side coupling map: P_v = P_t Wᵀ + b
            bias = tensors[(tower, kind, index, "bias")]
            prompts["vision"][kind][index] = prompts["text"][kind][index] @ weight.T + bias
    return prompts


def reference_logits(reference, model, tokens, pix, use_mask=False):
    prompts = reference_prompts(model)
    mask = tokens["attention_mask"] if use_mask else None
    text, _ = ref.text_forward(reference, tokens["input_ids"], **prompts["text"], attention_mask=mask)
    image, _ = ref.vision_forward(reference, pix, **prompts["vision"])
    return ref.logits(reference, text, image)


CASES = {
    # per-layer lengths that differ, a larger deep length than the input, a shorter last one
    "replace_both": dict(text_lengths=[2, 3, 1], vision_lengths=[3, 0, 2]),
    # zero-length input context, text only
    "replace_text_only": dict(text_lengths=[0, 2, 2]),
    # VPT-style vision only; the text is the fixed template
    "replace_vision_only": dict(vision_lengths=[0, 2, 3], text_template=TEMPLATE),
    # vision layer with no prompt after one with prompts carries them forward
    "replace_vision_carry": dict(vision_lengths=[2, 0, 0]),
    "maple": dict(text_lengths=[2, 2, 0], coupling="maple", ctx_init="a photo of a"),
    "maple_partial": dict(text_lengths=[2, 3, 1], vision_lengths=[2, 0, 1], coupling="maple"),
    "prefix_both": dict(mode="prefix", text_lengths=[2, 0, 3], vision_lengths=[0, 1, 2]),
    "prefix_text_only": dict(mode="prefix", text_lengths=[1, 1, 1]),
    "prefix_maple": dict(mode="prefix", text_lengths=[2, 0, 1], coupling="maple"),
}


# replace mode leaves attention to CLIP, so one sdpa case suffices; prefix mode computes attention itself: both
MATRIX = [(case, "eager") for case in sorted(CASES)] + [
    (case, "sdpa") for case in sorted(CASES) if case.startswith("prefix") or case == "replace_both"
]


@pytest.mark.parametrize(("case", "attn"), MATRIX)
def test_logits_match_hand_written_reference(case, attn):
    config = DeepPromptConfig(**CASES[case])
    reference, model = build(config, attn)
    tokens, pix = text_ids(config), pixels()
    with torch.no_grad():
        got = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        want = reference_logits(reference, model, tokens, pix)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert got.shape == (2, len(CLASSES))


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_prefix_mode_with_padding_mask(attn):
    config = DeepPromptConfig(**CASES["prefix_both"])
    reference, model = build(config, attn)
    tokens, pix = text_ids(config), pixels()
    assert not tokens["attention_mask"].all()  # "sea lion" is longer: the others are padded
    with torch.no_grad():
        got = model(input_ids=tokens["input_ids"], attention_mask=tokens["attention_mask"], pixel_values=pix)
        want = reference_logits(reference, model, tokens, pix, use_mask=True)
    torch.testing.assert_close(got.logits_per_image, want, atol=1e-5, rtol=1e-5)


def test_maple_init_keeps_of_a_frozen_and_equals_zero_shot_text():
    config = DeepPromptConfig(text_lengths=[2, 0], ctx_init="a photo of a")
    assert config.prompt_texts(["cat"], "{}") == ["a photo of a cat."]
    base = tiny_clip(0)
    reference = copy.deepcopy(base)
    model = get_peft_model(base, config)
    ids = tokenizer()(["a photo of a cat."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        prompted = model.get_text_features(input_ids=ids).pooler_output
        zero_shot = reference.get_text_features(input_ids=ids).pooler_output
    ctx = get_peft_model_state_dict(model)["base_model.model.text_model.embeddings.token_embedding.deep_prompt"]
    assert torch.equal(ctx, reference.text_model.embeddings.token_embedding.weight[[320, 1125]])  # "a", "photo"
    torch.testing.assert_close(prompted, zero_shot, atol=0, rtol=0)


@pytest.mark.parametrize("case", ["replace_both", "maple", "prefix_both"])
def test_trainable_saved_roundtrip_and_disable(case, tmp_path):
    config = DeepPromptConfig(**CASES[case])
    reference, model = build(config)
    tokens, pix = text_ids(config), pixels()

    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(re.search(r"\.deep_(prompt|proj)\.default", n) for n in trainable)
    saved = get_peft_model_state_dict(model)
    assert all(re.search(r"\.deep_(prompt|proj)(\.weight|\.bias)?$", k) for k in saved)
    expected = sum(n > 0 for n in config.text_lengths or []) + sum(
        (2 if config.coupling == "maple" else 1) for n in config.vision_lengths or [] if n
    )
    assert len(saved) == expected

    with torch.no_grad():
        before = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        with model.disable_adapter():
            disabled = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        base = reference(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
    assert torch.equal(disabled, base)
    assert not torch.allclose(before, base)

    model.save_pretrained(tmp_path)
    assert isinstance(PeftConfig.from_pretrained(tmp_path), DeepPromptConfig)
    loaded = PeftModel.from_pretrained(tiny_clip(0, text_layers=3, vision_layers=3), tmp_path)
    for key, value in get_peft_model_state_dict(loaded).items():
        assert torch.equal(value, saved[key])
    with torch.no_grad():
        after = loaded(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
    assert torch.equal(after, before)
    assert torch.equal(loaded.unload()(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image, base)


def test_classifier_uses_the_prompt_texts():
    config = DeepPromptConfig(**CASES["maple"])
    reference, model = build(config)
    clf = PromptClassifier(model, tokenizer(), CLASSES)
    pix = pixels()
    with torch.no_grad():
        want = reference_logits(reference, model, text_ids(config), pix)
        torch.testing.assert_close(clf(pix), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["maple_partial", "prefix_both"])
def test_gradient_checkpointing_gives_the_same_gradients(case):
    config = DeepPromptConfig(**CASES[case])
    tokens, pix = text_ids(config), pixels()
    grads = []
    for checkpointing in (False, True):
        _, model = build(config, "sdpa")
        model.train()
        if checkpointing:  # enable after wrapping (hf_integration.md §2.5)
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        clip_layers = [m for m in model.modules() if type(m).__name__ == "CLIPEncoderLayer"]
        calls = []
        # a pre-hook inside the checkpointed forward (the recompute may stop before a module's forward hook runs)
        hook = clip_layers[1].mlp.register_forward_pre_hook(lambda *args, calls=calls: calls.append(1))
        out = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        out.logsumexp(-1).sum().backward()
        hook.remove()
        assert len(calls) == (2 if checkpointing else 1)  # the layer really is recomputed in backward
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert grads[0][name].abs().sum() > 0, name
        torch.testing.assert_close(grads[1][name], grads[0][name], atol=1e-6, rtol=1e-5)


def test_prefix_mode_compiles_fullgraph():
    # replace mode + coupling is compiled in test_restore.py (RESTORE contains it)
    config = DeepPromptConfig(mode="prefix", text_lengths=[2, 0], vision_lengths=[0, 1])
    _, model = build(config, "sdpa", layers=2)
    tokens, pix = text_ids(config), pixels()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: any graph break raises
    with torch.no_grad():
        eager = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        got = compiled(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
    torch.testing.assert_close(got, eager, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("case", ["replace_both", "maple", "prefix_both"])
def test_bf16_autocast_and_bf16_base(case):
    config = DeepPromptConfig(**CASES[case])
    reference, model = build(config, "sdpa")
    tokens, pix = text_ids(config), pixels()
    with torch.no_grad():
        fp32 = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(input_ids=tokens["input_ids"], pixel_values=pix).logits_per_image
        model.get_base_model().to(torch.bfloat16)  # adapters stay as they are, inputs are cast to them
        half = model(input_ids=tokens["input_ids"], pixel_values=pix.bfloat16()).logits_per_image
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(mixed.float(), fp32, atol=0.1, rtol=0.05)
    torch.testing.assert_close(half.float(), fp32, atol=0.1, rtol=0.05)


# -- errors --------------------------------------------------------------------------------------------------------
def test_length_list_must_match_layer_count():
    with pytest.raises(
        ValueError,
        match=r"^`text_lengths` has 3 entries but the text tower has 2 layers; give one length per layer "
        r"\(0 = no prompt\)$",
    ):
        get_peft_model(tiny_clip(0), DeepPromptConfig(text_lengths=[1, 1, 1]))
    with pytest.raises(ValueError, match="^`vision_lengths` has 1 entries but the vision tower has 2 layers"):
        get_peft_model(tiny_clip(0), DeepPromptConfig(vision_lengths=[1]))


def test_negative_and_non_int_lengths():
    with pytest.raises(ValueError, match=r"^`vision_lengths` must contain lengths >= 0, got -1 at index 1$"):
        DeepPromptConfig(vision_lengths=[1, -1])
    with pytest.raises(TypeError, match=r"^`text_lengths` must contain ints, got 1.5 at index 0$"):
        DeepPromptConfig(text_lengths=[1.5, 0])
    with pytest.raises(ValueError, match="both empty or all zero"):
        DeepPromptConfig(text_lengths=[0, 0])


def test_coupling_needs_equal_lengths():
    with pytest.raises(
        ValueError,
        match=r"^`coupling='maple'` projects the text prompts of layer 1 into the vision tower, so "
        r"`vision_lengths\[1\]` \(3\) must equal `text_lengths\[1\]` \(2\)$",
    ):
        DeepPromptConfig(text_lengths=[2, 2], vision_lengths=[2, 3], coupling="maple")
    with pytest.raises(ValueError, match=r"`vision_lengths\[2\]` \(1\) must equal `text_lengths\[2\]` \(0\)"):
        DeepPromptConfig(text_lengths=[2, 2], vision_lengths=[2, 2, 1], coupling="maple")


def test_other_config_errors():
    with pytest.raises(ValueError, match=r"^`mode` must be one of \('replace', 'prefix'\), got 'deep'$"):
        DeepPromptConfig(text_lengths=[1, 1], mode="deep")
    with pytest.raises(ValueError, match=r"^`ctx_init` 'a photo' has 2 tokens, fewer than the 3 text prompt slots"):
        DeepPromptConfig(text_lengths=[2, 3], ctx_init="a photo")
    with pytest.raises(
        ValueError, match=r"^`ctx_init` initialises the replace-mode input context; got `mode`='prefix'$"
    ):
        DeepPromptConfig(text_lengths=[2, 3], ctx_init="a photo of a", mode="prefix")


class NoProjections(nn.Module):
    def forward(self, hidden_states, attention_mask=None, **kwargs):
        return hidden_states, None


def test_prefix_mode_refuses_attention_it_cannot_wrap():
    model = tiny_clip(0)
    model.text_model.encoder.layers[1].self_attn = NoProjections()
    with pytest.raises(
        TypeError,
        match=r"^`mode='prefix'` needs an attention module with `q_proj`, `k_proj`, `v_proj`, `out_proj` and head "
        r"sizes; 'text_model.encoder.layers.1.self_attn' is a NoProjections without `q_proj`",
    ):
        get_peft_model(model, DeepPromptConfig(mode="prefix", text_lengths=[0, 2]))

    model = tiny_clip(0)
    model.vision_model.config._attn_implementation = "flash_attention_2"
    with pytest.raises(
        ValueError,
        match=r"^`mode='prefix'` supports the attention implementations \('eager', 'sdpa'\), got "
        r"`_attn_implementation`='flash_attention_2' at 'vision_model.encoder.layers.0.self_attn'",
    ):
        get_peft_model(model, DeepPromptConfig(mode="prefix", vision_lengths=[1, 0]))


def test_prefix_mode_checks_the_implementation_again_at_forward():
    config = DeepPromptConfig(mode="prefix", vision_lengths=[1, 0])
    _, model = build(config, layers=2)
    model.get_base_model().vision_model.config._attn_implementation = "flex_attention"
    with pytest.raises(ValueError, match="`_attn_implementation`='flex_attention' at 'a prefix-prompted layer'"):
        model.get_base_model().get_image_features(pixel_values=pixels())


# -- presets and PromptSRC ---------------------------------------------------------------------------------------
def test_presets_reproduce_published_settings():
    ivlp = ivlp_preset(12)
    assert (ivlp.text_lengths, ivlp.vision_lengths, ivlp.ctx_init) == ([2] * 12, [2] * 12, "a photo of a")
    src_ivlp = ivlp_preset(12, n_ctx_text=4, n_ctx_vision=4, depth=9)
    assert src_ivlp.text_lengths == src_ivlp.vision_lengths == [4] * 9 + [0] * 3
    vpt = vpt_deep_preset(12)
    assert (vpt.text_lengths, vpt.vision_lengths, vpt.text_template) == (None, [8] * 12, "a photo of a {}.")
    assert vpt.prompt_texts(["sea_lion"], "itap of a {}.") == ["a photo of a sea lion."]
    lang = deep_language_preset(12)
    assert (lang.text_lengths, lang.vision_lengths) == ([4] * 12, None)
    maple = maple_preset(12)
    assert maple.text_lengths == maple.vision_lengths == [2] * 9 + [0] * 3
    assert (maple.coupling, maple.ctx_init, maple.mode) == ("maple", "a photo of a", "replace")
    assert maple.prompt_texts(["cat"], "{}") == ["a photo of a cat."]
    src = promptsrc_preset(12)
    assert isinstance(src, PromptSRCConfig) and src.text_lengths == src.vision_lengths == [4] * 9 + [0] * 3
    assert maple_preset((12, 24)).vision_lengths == [2] * 9 + [0] * 15  # ViT-L/14: 24 vision layers


def test_presets_clip_depth_to_the_model(caplog):
    model = tiny_clip(0)
    with caplog.at_level("WARNING"):
        config = maple_preset(model)
    assert config.text_lengths == config.vision_lengths == [2, 2]
    assert "`depth`=9 is deeper than the model's 2 layers; using 2" in caplog.text
    get_peft_model(model, config)  # fits


def test_promptsrc_config_defaults_and_reload(tmp_path):
    config = PromptSRCConfig()
    assert config.text_lengths == config.vision_lengths == [4] * 9 + [0] * 3
    assert (config.text_loss_weight, config.image_loss_weight, config.gpa_mean, config.gpa_std) == (25, 10, 15, 1)
    assert config.ctx_init == "a photo of a" and config.coupling == "none"
    model = get_peft_model(tiny_clip(0), promptsrc_preset(tiny_clip(0), text_loss_weight=5.0))
    model.save_pretrained(tmp_path)
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is PromptSRCConfig and loaded.text_loss_weight == 5.0
    assert loaded.peft_type == "PROMPTSRC"
