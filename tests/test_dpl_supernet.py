"""DPL supernet against an independent, hand-written re-statement of CLIP with prefix (key/value) prompts.

Run: `python -m pytest tests/test_dpl_supernet.py -q`.

The reference below recomputes both towers sample by sample from the weights, with plain tensor ops: per layer
`x + sum_m a_m * Attn(Q=LN1(x), K/V=LN1([x; P_m]))`, then the MLP. Prompts are visible to every text token (SOS
included); vision prompts are extra keys after the patches. It never calls transformers' modules or our wrappers.
"""

import math

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model

from peft_vlprompt import DPLSearchConfig
from peft_vlprompt.tuners.dpl import alpha_parameters, chosen_lengths, supernet_layers
from tests.reference_text import layer_norm, linear, quick_gelu
from tests.tiny import pixels, tiny_clip, tokenizer

TEXTS = ["a photo of a cat.", "a dog.", "a small red circle on a table."]


# -- the reference ---------------------------------------------------------------------------------------------
def ref_attention(h: torch.Tensor, prompts: torch.Tensor, attn, heads: int, causal: bool) -> torch.Tensor:
    """One head-by-head attention with queries h (L, w) and keys/values [h; prompts]; prompts always visible."""
    length, width = h.shape
    hd = width // heads
    kv = torch.cat([h, prompts])
    q, k, v = linear(h, attn.q_proj), linear(kv, attn.k_proj), linear(kv, attn.v_proj)
    heads_out = []
    for i in range(heads):
        cols = slice(i * hd, (i + 1) * hd)
        scores = q[:, cols] @ k[:, cols].T / math.sqrt(hd)
        if causal:
            future = torch.zeros(length, kv.shape[0], dtype=torch.bool)
            future[:, :length] = torch.ones(length, length, dtype=torch.bool).triu(1)
            scores = scores.masked_fill(future, float("-inf"))
        heads_out.append(scores.softmax(-1) @ v[:, cols])
    return linear(torch.cat(heads_out, dim=-1), attn.out_proj)


def ref_layer(x, layer, options, heads, causal):
    """options: [(weight, raw prompts (n, w))]; the prompts are normed with the layer's LN1."""
    h = layer_norm(x, layer.layer_norm1)
    mixed = sum(
        w * ref_attention(h, layer_norm(p, layer.layer_norm1), layer.self_attn, heads, causal) for w, p in options
    )
    x = x + mixed
    return x + linear(quick_gelu(linear(layer_norm(x, layer.layer_norm2), layer.mlp.fc1)), layer.mlp.fc2)


@torch.no_grad()
def ref_text_features(clip, ids: list[list[int]], options_per_layer) -> torch.Tensor:
    text, heads = clip.text_model, clip.config.text_config.num_attention_heads
    feats = []
    for row in ids:
        eot = row.index(49407)
        row = row[: eot + 1]  # drop padding: under the causal mask it cannot reach EOT
        x = text.embeddings.token_embedding.weight[row] + text.embeddings.position_embedding.weight[: len(row)]
        for layer, options in zip(text.encoder.layers, options_per_layer):
            x = ref_layer(x, layer, options, heads, causal=True)
        feats.append(layer_norm(x, text.final_layer_norm)[eot] @ clip.text_projection.weight.T)
    return torch.stack(feats)


@torch.no_grad()
def ref_image_features(clip, images: torch.Tensor, options_per_layer) -> torch.Tensor:
    vision, heads = clip.vision_model, clip.config.vision_config.num_attention_heads
    emb = vision.embeddings
    feats = []
    for image in images:
        patches = F.conv2d(image[None], emb.patch_embedding.weight, stride=emb.patch_size)[0]  # (w, g, g)
        x = torch.cat([emb.class_embedding[None], patches.flatten(1).T]) + emb.position_embedding.weight
        x = layer_norm(x, vision.pre_layrnorm)
        for layer, options in zip(vision.encoder.layers, options_per_layer):
            x = ref_layer(x, layer, options, heads, causal=False)
        feats.append(layer_norm(x[0], vision.post_layernorm) @ clip.visual_projection.weight.T)
    return torch.stack(feats)


def layer_options(model, tower: str, weights: list[torch.Tensor] | None = None):
    """[(softmax weight, candidate prompts)] per layer of a tower, read from the supernet's parameters."""
    options = []
    for i, layer in enumerate(supernet_layers(model, tower)):
        cands = layer.dpl_candidates["default"]
        a = layer.dpl_alpha["default"].detach().softmax(-1) if weights is None else weights[i]
        options.append([(a[c], layer.candidate_prompts("default", n).detach()) for c, n in enumerate(cands)])
    return options


def features(model, ids, images):
    text = model.get_text_features(input_ids=ids)
    image = model.get_image_features(pixel_values=images)
    return getattr(text, "pooler_output", text), getattr(image, "pooler_output", image)


def token_ids():
    return tokenizer()(TEXTS, padding=True, return_tensors="pt")["input_ids"]


def perturb_alpha(model, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for a in alpha_parameters(model):
            a.copy_(scale * torch.randn(a.shape, generator=g))


def set_one_hot(model, tower: str, lengths: list[int]):
    for layer, n in zip(supernet_layers(model, tower), lengths):
        cands = layer.dpl_candidates["default"]
        row = torch.full((len(cands),), float("-inf"))
        row[cands.index(n)] = 0.0
        with torch.no_grad():
            layer.dpl_alpha["default"].copy_(row)


# -- configuration errors (pinned text) --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"text_candidates": [1, 2, 3]}, "`text_candidates` must contain 0 (the no-prompt candidate), got [1, 2, 3]"),
        ({"vision_candidates": [0, -2, 4]}, "`vision_candidates` must not contain negative lengths, got [0, -2, 4]"),
        ({"text_candidates": []}, "`text_candidates` must be a non-empty list of prompt lengths, got []"),
        ({"text_candidates": [0, 2, 2]}, "`text_candidates` must not repeat a length, got [0, 2, 2]"),
        ({"text_candidates": [0], "vision_candidates": [0]}, "nothing to search: `text_candidates` and"),
        ({"mixing": "fast"}, "`mixing` must be one of ('efficient', 'naive'), got 'fast'"),
        ({"prompt_init": "zeros"}, "`prompt_init` must be one of ('released', 'normal'), got 'zeros'"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match="^" + __import__("re").escape(message)):
        DPLSearchConfig(**kwargs)


def test_candidates_are_sorted_and_zero_first():
    config = DPLSearchConfig(text_candidates=[6, 0, 2, 4])
    assert config.text_candidates == [0, 2, 4, 6]


def test_lengths_larger_than_the_backbone_allows():
    with pytest.raises(
        ValueError, match=r"^`text_candidates` has length 75, but the text tower's 77 positions allow at most 74"
    ):
        get_peft_model(tiny_clip(), DPLSearchConfig(text_candidates=[0, 75]))
    # tiny vision tower: (32 / 8)^2 + 1 = 17 image tokens
    with pytest.raises(ValueError, match=r"^`vision_candidates` has length 18, more than the vision tower's 17 image"):
        get_peft_model(tiny_clip(), DPLSearchConfig(vision_candidates=[0, 18]))
    model = get_peft_model(tiny_clip(), DPLSearchConfig(text_candidates=[0, 70], vision_candidates=[0]))
    ids = token_ids()  # 10 tokens + 70 prompts > 77
    with pytest.raises(
        ValueError, match=r"^the text prompt has \d+ tokens and DPL candidates up to 70 prefix prompts"
    ):
        model.get_text_features(input_ids=ids)


# -- equivalence with the reference ------------------------------------------------------------------------------
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("share_prompts", [False, True])
def test_one_hot_alpha_equals_fixed_prefix_reference(attn, share_prompts):
    model = get_peft_model(tiny_clip(attn=attn), DPLSearchConfig(share_prompts=share_prompts))
    choice = {"text": [3, 0], "vision": [6, 2]}
    for tower, lengths in choice.items():
        set_one_hot(model, tower, lengths)
    assert chosen_lengths(model) == choice
    ids, images = token_ids(), pixels(2)
    text, image = features(model, ids, images)
    base = tiny_clip(attn=attn)
    ref_text = ref_text_features(base, ids.tolist(), [[(1.0, p)] for (_, p) in _chosen(model, "text", choice)])
    ref_image = ref_image_features(base, images, [[(1.0, p)] for (_, p) in _chosen(model, "vision", choice)])
    torch.testing.assert_close(text, ref_text, atol=1e-5, rtol=0)
    torch.testing.assert_close(image, ref_image, atol=1e-5, rtol=0)
    # and the prompts matter: plain CLIP differs
    plain_text, _ = features(base, ids, images)
    assert (plain_text - ref_text).abs().max() > 1e-3


def _chosen(model, tower, choice):
    out = []
    for layer, n in zip(supernet_layers(model, tower), choice[tower]):
        out.append((n, layer.candidate_prompts("default", n).detach()))
    return out


@pytest.mark.parametrize("mixing", ["efficient", "naive"])
@pytest.mark.parametrize("share_prompts", [False, True])
def test_mixture_equals_reference_for_random_alpha(mixing, share_prompts):
    config = DPLSearchConfig(
        text_candidates=[0, 1, 3], vision_candidates=[0, 2, 4, 6], share_prompts=share_prompts, mixing=mixing
    )
    model = get_peft_model(tiny_clip(), config)
    perturb_alpha(model, seed=1, scale=2.0)
    ids, images = token_ids(), pixels(2)
    text, image = features(model, ids, images)
    base = tiny_clip()
    torch.testing.assert_close(
        text, ref_text_features(base, ids.tolist(), layer_options(model, "text")), atol=1e-5, rtol=0
    )
    torch.testing.assert_close(
        image, ref_image_features(base, images, layer_options(model, "vision")), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_efficient_equals_naive_outputs_and_gradients(attn):
    efficient = get_peft_model(tiny_clip(attn=attn), DPLSearchConfig(prompt_init="normal", init_std=0.5))
    naive = get_peft_model(tiny_clip(attn=attn), DPLSearchConfig(prompt_init="normal", init_std=0.5, mixing="naive"))
    naive.load_state_dict(efficient.state_dict())
    for model in (efficient, naive):
        perturb_alpha(model, seed=2, scale=3.0)
    ids = token_ids()
    mask = (torch.arange(ids.shape[1]) <= (ids == 49407).int().argmax(-1, keepdim=True)).long()  # padding mask too
    images = pixels(2)
    grads = []
    for model in (efficient, naive):
        out = model(input_ids=ids, attention_mask=mask, pixel_values=images).logits_per_image
        params = [p for n, p in model.named_parameters() if p.requires_grad]
        grads.append((out, torch.autograd.grad(out.square().sum(), params)))
    torch.testing.assert_close(grads[0][0], grads[1][0], atol=1e-5, rtol=0)
    for g_eff, g_naive in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g_eff, g_naive, atol=1e-5, rtol=1e-4)


def test_extreme_scores_stay_finite():
    # prompts far larger than the tokens push prompt scores far above token scores; LSE combination must not overflow
    model = get_peft_model(tiny_clip(), DPLSearchConfig(prompt_init="normal", init_std=1.0))
    with torch.no_grad():
        for layer in supernet_layers(model):
            layer.base_layer.k_proj.weight.mul_(200.0)
    perturb_alpha(model, seed=3)
    out = model(input_ids=token_ids(), pixel_values=pixels(2)).logits_per_image
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert all(torch.isfinite(p.grad).all() for p in alpha_parameters(model))


# -- peft integration ---------------------------------------------------------------------------------------------
def test_trainable_state_save_load_and_disable(tmp_path):
    model = get_peft_model(tiny_clip(), DPLSearchConfig(text_candidates=[0, 2, 4, 6], vision_candidates=[0, 1, 2]))
    trainable = {n: p.numel() for n, p in model.named_parameters() if p.requires_grad}
    # text: 2 layers x (4 alpha + 12 prompts x 32); vision: 2 layers x (3 alpha + 3 prompts x 40)
    assert sum(trainable.values()) == 2 * (4 + 12 * 32) + 2 * (3 + 3 * 40)
    assert all("dpl_alpha" in n or "dpl_prompts" in n for n in trainable)
    perturb_alpha(model, seed=4)
    ids, images = token_ids(), pixels(2)
    expected = model(input_ids=ids, pixel_values=images).logits_per_image
    model.save_pretrained(tmp_path)
    assert type(PeftConfig.from_pretrained(tmp_path)) is DPLSearchConfig
    loaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    torch.testing.assert_close(loaded(input_ids=ids, pixel_values=images).logits_per_image, expected, atol=0, rtol=0)
    with loaded.disable_adapter():
        plain = loaded(input_ids=ids, pixel_values=images).logits_per_image
    torch.testing.assert_close(plain, tiny_clip()(input_ids=ids, pixel_values=images).logits_per_image, atol=0, rtol=0)
    unloaded = loaded.unload()
    assert not supernet_layers(unloaded)


def test_only_searched_towers_are_wrapped():
    model = get_peft_model(tiny_clip(), DPLSearchConfig(vision_candidates=[0]))
    assert {layer.tower for layer in supernet_layers(model)} == {"text"}
    assert chosen_lengths(model)["vision"] == [0, 0]


def test_twenty_or_more_layers_are_all_wrapped():
    # peft shrinks >= 20 target names to suffixes before matching; every layer must still get its supernet wrapper
    model = get_peft_model(
        tiny_clip(text_layers=10, vision_layers=10), DPLSearchConfig(text_candidates=[0, 1], vision_candidates=[0, 1])
    )
    assert [(layer.tower, layer.layer_index) for layer in supernet_layers(model)] == [
        (tower, i) for tower in ("text", "vision") for i in range(10)
    ]


def test_supernet_layer_compiles_without_graph_breaks():
    model = get_peft_model(tiny_clip(attn="sdpa"), DPLSearchConfig())
    perturb_alpha(model, seed=5)
    torch._dynamo.reset()
    for layer, causal in ((supernet_layers(model, "text")[0], True), (supernet_layers(model, "vision")[1], False)):
        hidden = torch.randn(2, 9, layer.base_layer.embed_dim)
        kwargs = {"is_causal": True} if causal else {}
        expected, _ = layer(hidden, None, **kwargs)
        compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)  # fullgraph: a graph break is an error
        out, _ = compiled(hidden, None, **kwargs)
        out.sum().backward()
        torch.testing.assert_close(out, expected, atol=1e-6, rtol=0)
        assert layer.dpl_alpha["default"].grad is not None and layer.dpl_prompts["default"].grad is not None
