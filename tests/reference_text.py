"""An independent re-statement of CLIP's text tower, written from the math with plain tensor ops.

It reads weights from an untouched `CLIPModel` and takes the token embeddings of one prompt (so tests can substitute
learned context by hand); it never calls transformers' modules or peft_vlprompt's wrappers.
"""

import torch
import torch.nn.functional as F


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def linear(x: torch.Tensor, module) -> torch.Tensor:
    return x @ module.weight.T + module.bias


def layer_norm(x: torch.Tensor, module) -> torch.Tensor:
    mean = x.mean(-1, keepdim=True)
    var = ((x - mean) ** 2).mean(-1, keepdim=True)
    return (x - mean) / torch.sqrt(var + module.eps) * module.weight + module.bias


def causal_self_attention(x: torch.Tensor, attn, heads: int) -> torch.Tensor:
    length, width = x.shape
    head_dim = width // heads
    q = linear(x, attn.q_proj).view(length, heads, head_dim).transpose(0, 1)
    k = linear(x, attn.k_proj).view(length, heads, head_dim).transpose(0, 1)
    v = linear(x, attn.v_proj).view(length, heads, head_dim).transpose(0, 1)
    scores = q @ k.transpose(-1, -2) / head_dim**0.5
    future = torch.ones(length, length, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    out = scores.softmax(-1) @ v  # (heads, L, head_dim)
    return linear(out.transpose(0, 1).reshape(length, width), attn.out_proj)


@torch.no_grad()
def text_feature(clip, token_embeds: torch.Tensor, eot_position: int) -> torch.Tensor:
    """Projected (unnormalised) text feature of one prompt given its token embeddings (L, d)."""
    text = clip.text_model
    heads = clip.config.text_config.num_attention_heads
    x = token_embeds + text.embeddings.position_embedding.weight[: token_embeds.shape[0]]
    for layer in text.encoder.layers:
        x = x + causal_self_attention(layer_norm(x, layer.layer_norm1), layer.self_attn, heads)
        h = layer_norm(x, layer.layer_norm2)
        x = x + linear(quick_gelu(linear(h, layer.mlp.fc1)), layer.mlp.fc2)
    x = layer_norm(x, text.final_layer_norm)
    return x[eot_position] @ clip.text_projection.weight.T


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
