"""RESTORE: surgery adapters, both feature-shift definitions and the ratio update, checked by hand."""

import copy
import re

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict

from peft_vlprompt.losses import restore_feature_shift_loss, restore_losses
from peft_vlprompt.tuners.restore import RestoreAdapterConfig, restore_preset, update_restore_ratios
from tests import reference_clip as ref
from tests.tiny import pixels, tiny_clip, tokenizer

CLASSES = ["cat", "dog", "sea lion"]
PREFIX = "base_model.model."


def make(attn="eager", randomise=True, **kwargs):
    """(untouched base copy, RESTORE model): 3 layers, coupled prompts at indices 0-1 (deep layer 1)."""
    config = RestoreAdapterConfig(**{"text_lengths": [2, 3, 0], **kwargs})
    base = tiny_clip(0, attn=attn, text_layers=3, vision_layers=3)
    reference = copy.deepcopy(base)
    model = get_peft_model(base, config)
    if randomise:
        gen = torch.Generator().manual_seed(3)
        with torch.no_grad():
            for _, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    return reference, model


def state(model):
    return {k.removeprefix(PREFIX): v.detach() for k, v in get_peft_model_state_dict(model).items()}


def prompts(sd):
    """Hand-assembled replace-mode prompts: text as saved, vision = P_t Wᵀ + b."""
    text = {
        0: sd["text_model.embeddings.token_embedding.deep_prompt"],
        1: sd["text_model.encoder.layers.1.deep_prompt"],
    }
    vision = {
        0: text[0] @ sd["vision_model.embeddings.deep_proj.weight"].T + sd["vision_model.embeddings.deep_proj.bias"],
        1: text[1] @ sd["vision_model.encoder.layers.1.deep_proj.weight"].T
        + sd["vision_model.encoder.layers.1.deep_proj.bias"],
    }
    return text, vision


def surgery(f, sd, name):
    """f + r · (W2 QuickGELU(W1 LN(f) + b1) + b2), LN with weight/bias, eps 1e-5."""
    mean = f.mean(-1, keepdim=True)
    var = ((f - mean) ** 2).mean(-1, keepdim=True)
    h = (f - mean) / torch.sqrt(var + 1e-5) * sd[f"{name}.restore_norm.weight"] + sd[f"{name}.restore_norm.bias"]
    h = h @ sd[f"{name}.restore_fc1.weight"].T + sd[f"{name}.restore_fc1.bias"]
    h = h * torch.sigmoid(1.702 * h)
    h = h @ sd[f"{name}.restore_fc2.weight"].T + sd[f"{name}.restore_fc2.bias"]
    return f + sd[f"{name}.restore_ratio"] * h


def frob_gram(p):
    """‖PᵀP‖_F, literally (d x d)."""
    return torch.sqrt(((p.T @ p) ** 2).sum())


def tokens(model):
    texts = model.peft_config["default"].prompt_texts(CLASSES, "{}")
    return tokenizer()(texts, padding=True, return_tensors="pt")["input_ids"]


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_logits_match_hand_computed_restore(attn):
    reference, model = make(attn)
    with torch.no_grad():  # non-default ratios, so r really enters
        model.get_base_model().text_projection.restore_ratio["default"].fill_(0.7)
        model.get_base_model().visual_projection.restore_ratio["default"].fill_(0.4)
    sd = state(model)
    ids, pix = tokens(model), pixels()
    text_p, vision_p = prompts(sd)
    with torch.no_grad():
        got = model(input_ids=ids, pixel_values=pix).logits_per_image
        text, _ = ref.text_forward(reference, ids, replace=text_p)
        image, _ = ref.vision_forward(reference, pix, replace=vision_p)
        want = ref.logits(reference, surgery(text, sd, "text_projection"), surgery(image, sd, "visual_projection"))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    with torch.no_grad(), model.disable_adapter():
        disabled = model(input_ids=ids, pixel_values=pix).logits_per_image
    assert torch.equal(disabled, reference(input_ids=ids, pixel_values=pix).logits_per_image)


def test_trainable_and_saved_state():
    _, model = make(randomise=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert all(
        re.search(r"\.(deep_prompt|deep_proj|restore_norm|restore_fc1|restore_fc2)\.default", n) for n in trainable
    )
    saved = state(model)
    extra = {k for k in saved if not re.search(r"\.(deep_prompt|deep_proj|restore_norm|restore_fc\d)(\.|$)", k)}
    assert extra == {
        f"{tower}.restore_{what}"
        for tower in ("text_projection", "visual_projection")
        for what in ("ratio", "updated", "init_norms")
    }
    assert float(saved["text_projection.restore_ratio"]) == pytest.approx(0.1)
    assert float(saved["visual_projection.restore_ratio"]) == pytest.approx(0.01)
    assert not saved["text_projection.restore_updated"]


def test_initial_norms_are_stored_at_creation():
    _, model = make(randomise=False)
    sd = state(model)
    text_p, vision_p = prompts(sd)  # deep layer 1 only: the input (index 0) is excluded
    torch.testing.assert_close(sd["text_projection.restore_init_norms"], frob_gram(text_p[1])[None])
    torch.testing.assert_close(sd["visual_projection.restore_init_norms"], frob_gram(vision_p[1])[None])


def test_prompt_norm_loss_matches_hand_value_and_has_gradients():
    _, model = make(randomise=False)
    init = state(model)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.requires_grad and ("deep_prompt" in name or "deep_proj" in name):
                param.add_(torch.randn(param.shape, generator=torch.Generator().manual_seed(5)) * 0.1)
    text_p, vision_p = prompts(state(model))
    s_t = frob_gram(text_p[1]) / init["text_projection.restore_init_norms"][0]
    s_v = frob_gram(vision_p[1]) / init["visual_projection.restore_init_norms"][0]
    loss = restore_losses(model)["restore_fs"]  # config default: prompt_norm, weight 1
    torch.testing.assert_close(loss, (s_t - s_v) ** 2)
    assert loss > 0
    loss.backward()
    prompt = model.get_base_model().text_model.encoder.layers[1].deep_prompt["default"]
    proj = model.get_base_model().vision_model.encoder.layers[1].deep_proj["default"].weight
    assert prompt.grad.abs().sum() > 0 and proj.grad.abs().sum() > 0
    half = restore_losses(model, weight=0.5)["restore_fs"]
    torch.testing.assert_close(half, 0.5 * (s_t - s_v) ** 2)


def block_shift(prompted, base, mask=None):
    """Per-block mean over tokens of ‖Δh‖ / ‖h_base‖, written out for the test."""
    out = []
    for p, b in zip(prompted[1:], base[1:]):
        p = p[:, : b.shape[1]]
        rel = torch.sqrt(((p - b) ** 2).sum(-1)) / torch.sqrt((b**2).sum(-1))
        out.append(rel.mean() if mask is None else rel[mask].mean())
    return torch.stack(out)


def test_features_loss_matches_hand_value():
    reference, model = make()
    sd = state(model)
    ids, pix = tokens(model), pixels()
    text_p, vision_p = prompts(sd)
    with torch.no_grad():
        _, t_prompted = ref.text_forward(reference, ids, replace=text_p)
        _, t_base = ref.text_forward(reference, ids)
        _, v_prompted = ref.vision_forward(reference, pix, replace=vision_p)
        _, v_base = ref.vision_forward(reference, pix)
    eot = (ids == 49407).int().argmax(-1)
    mask = torch.arange(ids.shape[1])[None] <= eot[:, None]
    t_shift, v_shift = block_shift(t_prompted, t_base, mask), block_shift(v_prompted, v_base)
    want = ((t_shift - v_shift) ** 2).sum()
    got = restore_losses(model, ids, pix, definition="features", weight=2.0)["restore_fs"]
    torch.testing.assert_close(got, 2.0 * want, atol=1e-5, rtol=1e-5)
    got.backward()  # the prompted side carries gradients
    assert model.get_base_model().text_model.encoder.layers[1].deep_prompt["default"].grad.abs().sum() > 0
    torch.testing.assert_close(
        restore_feature_shift_loss(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.5, 2.5])), torch.tensor(0.5)
    )


def test_ratio_update_once_at_a_third_and_survives_save_load(tmp_path):
    _, model = make()
    sd = state(model)
    text_p, vision_p = prompts(sd)
    r_t, r_v = float(sd["text_projection.restore_ratio"]), float(sd["visual_projection.restore_ratio"])
    assert [update_restore_ratios(model, epoch, 10) for epoch in range(3)] == [False] * 3
    assert float(state(model)["text_projection.restore_ratio"]) == r_t
    assert update_restore_ratios(model, 3, 10)  # 10 // 3 = 3
    after = state(model)
    want_t = r_t + 0.02 * frob_gram(text_p[1])  # the mean over the single deep layer
    want_v = r_v + 0.005 * frob_gram(vision_p[1])
    torch.testing.assert_close(after["text_projection.restore_ratio"], want_t)
    torch.testing.assert_close(after["visual_projection.restore_ratio"], want_v)
    assert after["text_projection.restore_updated"] and after["visual_projection.restore_updated"]
    assert not update_restore_ratios(model, 4, 10)  # once per run
    assert torch.equal(state(model)["text_projection.restore_ratio"], after["text_projection.restore_ratio"])

    ids, pix = tokens(model), pixels()
    with torch.no_grad():
        logits = model(input_ids=ids, pixel_values=pix).logits_per_image
    model.save_pretrained(tmp_path)
    assert type(PeftConfig.from_pretrained(tmp_path)) is RestoreAdapterConfig
    loaded = PeftModel.from_pretrained(tiny_clip(0, text_layers=3, vision_layers=3), tmp_path)
    reloaded = state(loaded)
    assert reloaded.keys() == after.keys()
    assert all(torch.equal(reloaded[k], after[k]) for k in after)
    assert not update_restore_ratios(loaded, 5, 10)  # the saved flag keeps it from running twice
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids, pixel_values=pix).logits_per_image, logits)


def test_resumed_run_past_the_update_epoch_updates_once():
    _, model = make()
    assert update_restore_ratios(model, 7, 10) and not update_restore_ratios(model, 8, 10)
    with pytest.raises(ValueError, match=r"^`num_epochs` must be an int >= 1, got 0$"):
        update_restore_ratios(model, 0, 0)


def test_presets_and_errors():
    pets = restore_preset("OxfordPets", 12)
    assert (pets.vision_ratio, pets.text_ratio, pets.fs_weight) == (0.01, 0.1, 1.0)
    assert pets.text_lengths == pets.vision_lengths == [2] * 9 + [0] * 3
    assert (pets.coupling, pets.ctx_init) == ("maple", "a photo of a")
    dtd = restore_preset("DescribableTextures")
    assert (dtd.vision_ratio, dtd.text_ratio, dtd.fs_weight) == (0.15, 0.1, 0.5)
    assert restore_preset("fgvc_aircraft").vision_ratio == 0.1
    assert restore_preset("sun397").text_ratio == 0.05
    assert restore_preset("eurosat", tiny_clip(0)).text_lengths == [2, 2]
    with pytest.raises(ValueError, match=r"^no RESTORE setting for dataset 'mnist'; known: \['caltech101'"):
        restore_preset("mnist")
    with pytest.raises(
        ValueError, match=r"^RESTORE uses MaPLe-coupled prompts: `coupling` must be 'maple', got 'none'$"
    ):
        RestoreAdapterConfig(text_lengths=[2, 2], coupling="none")
    with pytest.raises(ValueError, match=r"^`fs_definition` must be one of \('prompt_norm', 'features'\), got 'x'$"):
        RestoreAdapterConfig(text_lengths=[2, 2], fs_definition="x")
    with pytest.raises(ValueError, match=r"^`text_ratio` must be a number >= 0.0, got -1$"):
        RestoreAdapterConfig(text_lengths=[2, 2], text_ratio=-1)


def test_compiles_without_graph_breaks_and_runs_in_bf16_and_with_checkpointing():
    model = get_peft_model(tiny_clip(0, attn="sdpa"), RestoreAdapterConfig(text_lengths=[2, 2]))
    ids, pix = tokens(model), pixels()
    with torch.no_grad():
        eager = model(input_ids=ids, pixel_values=pix).logits_per_image
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # a graph break raises
        torch.testing.assert_close(compiled(input_ids=ids, pixel_values=pix).logits_per_image, eager)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(input_ids=ids, pixel_values=pix).logits_per_image
    torch.testing.assert_close(mixed.float(), eager, atol=0.1, rtol=0.05)
    grads = []
    for checkpointing in (False, True):
        model.zero_grad()
        model.train()
        if checkpointing:
            model.get_base_model().activation_checkpointing_enable({"use_reentrant": False})
        model(input_ids=ids, pixel_values=pix).logits_per_image.logsumexp(-1).sum().backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad})
    assert all(g.abs().sum() > 0 for g in grads[0].values())
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, atol=1e-6, rtol=1e-5)
