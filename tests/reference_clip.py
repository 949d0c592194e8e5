"""An independent re-statement of CLIP's forward (both towers), written from the math with plain tensor ops.

It reads the weights of an untouched `CLIPModel` (a copy made before any adapter was added) and takes prompt tensors
as plain dicts, so tests can check every deep-prompt layout without calling transformers' modules or peft_vlprompt's
wrappers:

- `replace[i]` (text): rows 1..n of the sequence are set to the prompts, at the token embeddings (i = 0, before the
  positional embedding) or before layer i.
- `replace[i]` (vision): i = 0 appends the prompts after CLS+patches (+ positions), before the pre-LN; layer i >= 1
  keeps only the image tokens of the incoming sequence and appends its prompts; layers without prompts pass the whole
  sequence on.
- `prefix[i]`: layer i's keys/values are computed from LN1 of [x_SOS ; P ; x_1..] (text; every query sees P) or
  [x ; P] (vision), DPL's literal layout.
"""

import torch


def act(x: torch.Tensor, name: str) -> torch.Tensor:
    if name == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if name == "gelu":
        return 0.5 * x * (1 + torch.erf(x / 2**0.5))
    raise NotImplementedError(name)


def linear(x: torch.Tensor, module) -> torch.Tensor:
    out = x @ module.weight.T
    return out + module.bias if module.bias is not None else out


def layer_norm(x: torch.Tensor, module) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def attention(q_in: torch.Tensor, kv_in: torch.Tensor, attn, heads: int, allowed: torch.Tensor | None) -> torch.Tensor:
    """softmax(q kᵀ / sqrt(d) restricted to `allowed` (B, Lq, Lk) bool) v, then out_proj. q_in (B, Lq, w)."""
    batch, lq, width = q_in.shape
    lk, hd = kv_in.shape[1], width // heads
    q = linear(q_in, attn.q_proj).view(batch, lq, heads, hd).transpose(1, 2)
    k = linear(kv_in, attn.k_proj).view(batch, lk, heads, hd).transpose(1, 2)
    v = linear(kv_in, attn.v_proj).view(batch, lk, heads, hd).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / hd**0.5
    if allowed is not None:
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, lq, width)
    return linear(out, attn.out_proj)


def block(x, layer, heads, hidden_act, allowed, prompt=None, text=False):
    """One pre-LN encoder block; `prompt` (n, w) adds prefix keys/values."""
    h = layer_norm(x, layer.layer_norm1)
    if prompt is None:
        kv, mask = h, allowed
    else:
        p = layer_norm(prompt, layer.layer_norm1).expand(x.shape[0], -1, -1)
        n, batch, length = prompt.shape[0], x.shape[0], x.shape[1]
        visible = torch.ones(batch, length, n, dtype=torch.bool)
        if text:  # [SOS ; P ; rest]
            kv = torch.cat([h[:, :1], p, h[:, 1:]], dim=1)
            mask = torch.cat([allowed[..., :1], visible, allowed[..., 1:]], dim=-1)
        else:
            kv = torch.cat([h, p], dim=1)
            mask = None if allowed is None else torch.cat([allowed, visible], dim=-1)
    x = x + attention(h, kv, layer.self_attn, heads, mask)
    h = layer_norm(x, layer.layer_norm2)
    return x + linear(act(linear(h, layer.mlp.fc1), hidden_act), layer.mlp.fc2)


def text_forward(clip, input_ids, replace=None, prefix=None, attention_mask=None):
    """(projected pooled features (B, D), hidden states [input, after layer 0, ...]) of the text tower."""
    replace, prefix = replace or {}, prefix or {}
    cfg, text = clip.config.text_config, clip.text_model
    layers = list(text.encoder.layers)
    batch, length = input_ids.shape
    x = text.embeddings.token_embedding.weight[input_ids]
    if 0 in replace:
        x = x.clone()
        x[:, 1 : 1 + replace[0].shape[0]] = replace[0]
    x = x + text.embeddings.position_embedding.weight[:length]
    allowed = torch.ones(length, length, dtype=torch.bool).tril().expand(batch, -1, -1)
    if attention_mask is not None:
        allowed = allowed & attention_mask.bool()[:, None, :]
    states = [x]
    for i, layer in enumerate(layers):
        if i > 0 and i in replace:
            x = x.clone()
            x[:, 1 : 1 + replace[i].shape[0]] = replace[i]
        x = block(x, layer, cfg.num_attention_heads, cfg.hidden_act, allowed, prefix.get(i), text=True)
        states.append(x)
    x = layer_norm(x, text.final_layer_norm)
    eot = (input_ids == cfg.eos_token_id).int().argmax(-1)
    return x[torch.arange(batch), eot] @ clip.text_projection.weight.T, states


def vision_forward(clip, pixel_values, replace=None, prefix=None):
    """(projected CLS features (B, D), hidden states incl. prompt tokens) of the vision tower."""
    replace, prefix = replace or {}, prefix or {}
    cfg, vision = clip.config.vision_config, clip.vision_model
    emb = vision.embeddings
    batch, p = pixel_values.shape[0], cfg.patch_size
    grid = cfg.image_size // p
    patches = (
        pixel_values.reshape(batch, 3, grid, p, grid, p).permute(0, 2, 4, 1, 3, 5).reshape(batch, grid * grid, -1)
    )
    x = patches @ emb.patch_embedding.weight.reshape(cfg.hidden_size, -1).T
    x = torch.cat([emb.class_embedding.expand(batch, 1, -1), x], dim=1) + emb.position_embedding.weight
    n_image = x.shape[1]
    if 0 in replace:
        x = torch.cat([x, replace[0].expand(batch, -1, -1)], dim=1)
    x = layer_norm(x, vision.pre_layrnorm)
    states = [x]
    for i, layer in enumerate(vision.encoder.layers):
        if i > 0 and i in replace:
            x = torch.cat([x[:, :n_image], replace[i].expand(batch, -1, -1)], dim=1)
        x = block(x, layer, cfg.num_attention_heads, cfg.hidden_act, None, prefix.get(i))
        states.append(x)
    pooled = layer_norm(x[:, 0], vision.post_layernorm)
    return pooled @ clip.visual_projection.weight.T, states


def normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def logits(clip, text_features: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
    """CLIP's logits_per_image from unnormalised features."""
    return clip.logit_scale.exp() * normalize(image_features) @ normalize(text_features).T
