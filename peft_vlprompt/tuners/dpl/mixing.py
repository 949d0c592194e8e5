"""Attention over [tokens; prefix prompts], and the softmax(alpha)-weighted mixture of it over prompt lengths.

Shapes: B batch, H heads, L tokens, d head size, T prompt vectors of all candidates of one layer, C candidates.
Prompts extend keys and values only; every query may see every prompt (the token-to-token part keeps its mask).

The efficient mixture uses that the candidates differ only in their prompt keys. For candidate c with prompt set S_c

    Attn_c = (sum_tok e^{s} v + sum_{t in S_c} e^{s_t} v_t) / (Z_tok + Z_c)

so the token scores, their normaliser lse_tok = log Z_tok and the token attention o_tok are computed once, each
candidate adds only the log-normaliser of its own prompt keys, lse_c, and the candidates are combined through
lse_all_c = logaddexp(lse_tok, lse_c):

    sum_c a_c Attn_c = o_tok * sum_c a_c e^{lse_tok - lse_all_c} + sum_t [sum_{c: t in S_c} a_c e^{s_t - lse_all_c}] v_t

Every exponent is <= 0, so nothing overflows, and the whole mixture costs one attention over L + T keys instead of
C attentions (each with its own q/k/v projections) as in the released code.
"""

import torch
from torch import nn


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., n, width) -> (..., heads, n, width // heads)."""
    *lead, n, width = x.shape
    return x.view(*lead, n, heads, width // heads).transpose(-3, -2)


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(B, heads, n, d) -> (B, n, heads * d)."""
    batch, heads, n, d = x.shape
    return x.transpose(1, 2).reshape(batch, n, heads * d)


def token_bias(
    attention_mask: torch.Tensor | None, causal: bool, length: int, device: torch.device
) -> torch.Tensor | None:
    """Additive float32 bias over the token keys, broadcastable to (B, H, L, L), or None for full visibility.

    transformers passes the text tower an additive float mask (eager), a boolean "may attend" mask (sdpa with
    padding) or nothing (sdpa without padding, where causality is implied); the vision tower gets nothing.
    """
    low = torch.finfo(torch.float32).min  # like transformers: finite, so a fully masked row cannot give NaN
    if attention_mask is None:
        if not causal:
            return None
        future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        return torch.zeros(length, length, device=device).masked_fill(future, low)[None, None]
    if attention_mask.dtype == torch.bool:
        return torch.zeros(attention_mask.shape, device=device).masked_fill(~attention_mask, low)
    return attention_mask.float().clamp(min=low)


def attention_output(attention: nn.Module, context: torch.Tensor) -> torch.Tensor:
    """Heads (B, H, L, d) -> CLIP attention output (B, L, width) through `out_proj`."""
    return attention.out_proj(merge_heads(context).to(attention.out_proj.weight.dtype))


def prefix_attention(
    attention: nn.Module, hidden: torch.Tensor, prompts: torch.Tensor, bias: torch.Tensor | None
) -> torch.Tensor:
    """One CLIP attention with Q = hidden, K/V = [hidden; prompts] (prompts already normed), output (B, L, width).

    The plain self-attention when `prompts` has no rows. This is also what a fixed-length prefix layer computes.
    """
    heads, scale = attention.num_heads, attention.scale
    q = split_heads(attention.q_proj(hidden), heads)
    k = split_heads(attention.k_proj(hidden), heads)
    v = split_heads(attention.v_proj(hidden), heads)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    if prompts.shape[0]:
        kp = split_heads(attention.k_proj(prompts), heads)  # (H, n, d): the same for every sample
        vp = split_heads(attention.v_proj(prompts), heads)
        prompt_scores = (q @ kp.transpose(-1, -2)).float() * scale
        scores = torch.cat([scores, prompt_scores], dim=-1)
        v = torch.cat([v, vp.expand(v.shape[0], -1, -1, -1)], dim=-2)
    probs = scores.softmax(-1).to(v.dtype)
    return attention_output(attention, probs @ v)


def naive_mixture(
    attention: nn.Module,
    hidden: torch.Tensor,
    prompts: torch.Tensor,
    weights: torch.Tensor,
    segments: list[tuple[int, int]],
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """`sum_c weights[c] * prefix_attention(prompts[segment c])`: one full attention per candidate."""
    out = 0
    for weight, (start, count) in zip(weights, segments):
        out = out + weight.to(hidden.dtype) * prefix_attention(attention, hidden, prompts[start : start + count], bias)
    return out


def efficient_mixture(
    attention: nn.Module,
    hidden: torch.Tensor,
    prompts: torch.Tensor,
    weights: torch.Tensor,
    members: torch.Tensor,
    bias: torch.Tensor | None,
) -> torch.Tensor:
    """The same mixture as `naive_mixture`, with shared token scores (see the module docstring).

    Args:
        attention: the frozen CLIP attention (q/k/v/out projections).
        hidden: LN1(x), (B, L, width).
        prompts: LN1 of every candidate's prompts, (T, width).
        weights: softmax(alpha) of this layer, (C,); candidate 0 is the length-0 one (no prompt).
        members: (T, C - 1) bool, `members[t, c - 1]` when prompt row t belongs to candidate c >= 1.
        bias: additive token-key bias (see `token_bias`) or None.
    """
    heads, scale = attention.num_heads, attention.scale
    q = split_heads(attention.q_proj(hidden), heads)
    k = split_heads(attention.k_proj(hidden), heads)
    v = split_heads(attention.v_proj(hidden), heads)
    scores = (q @ k.transpose(-1, -2)).float() * scale
    if bias is not None:
        scores = scores + bias
    lse_tok = scores.logsumexp(-1)  # (B, H, L)
    tok_out = (scores - lse_tok.unsqueeze(-1)).exp().to(v.dtype) @ v  # plain self-attention, (B, H, L, d)

    weights = weights.float()
    w = weights[1:]  # candidates are sorted with length 0 first: weights[0] is the plain self-attention

    kp = split_heads(attention.k_proj(prompts), heads)  # (H, T, d)
    vp = split_heads(attention.v_proj(prompts), heads)
    prompt_scores = (q @ kp.transpose(-1, -2)).float() * scale  # (B, H, L, T)
    # scores of candidate c's own prompts; -inf elsewhere *before* exp, so masked entries give exact zeros (and
    # zero gradients, where exp-then-mask could give inf * 0 = NaN)
    per_candidate = prompt_scores.unsqueeze(-1).masked_fill(~members, float("-inf"))  # (B, H, L, T, C')
    lse_c = per_candidate.logsumexp(-2)  # (B, H, L, C'), finite: each of these candidates has a prompt
    lse_all = torch.logaddexp(lse_tok.unsqueeze(-1), lse_c)
    coef_tok = weights[0] + ((lse_tok.unsqueeze(-1) - lse_all).exp() * w).sum(-1)  # (B, H, L)
    coef_prompt = ((per_candidate - lse_all.unsqueeze(-2)).exp() * w).sum(-1)  # (B, H, L, T)
    mixed = coef_tok.unsqueeze(-1).to(tok_out.dtype) * tok_out + coef_prompt.to(vp.dtype) @ vp
    return attention_output(attention, mixed)
