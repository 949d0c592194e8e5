"""Prefix-mode deep prompts (DPL): prompts are extra keys/values of a layer's attention, nothing else changes.

In layer i with prompts P_i (n, width): Q = q_proj(LN1(x)), K = k_proj([LN1(x) ; LN1(P_i)]), V likewise, so every
token (SOS included) may attend to every prompt while the real tokens keep their causal/padding mask. The prompt keys
are appended after the token keys: attention is invariant to the order of keys when the mask columns move with them,
so this equals DPL's text layout K = [x_SOS ; P ; x_1..] exactly (up to float summation order).
"""

import torch
import torch.nn.functional as F
from torch import nn

from .config import LayerSpec
from .layer import DeepPromptLayer

SUPPORTED_ATTENTION = ("eager", "sdpa")
_REQUIRED = ("q_proj", "k_proj", "v_proj", "out_proj", "num_heads", "head_dim", "scale")


def attention_implementation(attention: nn.Module) -> str | None:
    config = getattr(attention, "config", None)
    return getattr(config, "_attn_implementation", None)


def check_prefix_attention(attention: nn.Module, key: str) -> None:
    """Raise a clear error if prefix prompts cannot be computed for `attention` (at `key`)."""
    missing = [name for name in _REQUIRED if not hasattr(attention, name)]
    if missing:
        raise TypeError(
            f"`mode='prefix'` needs an attention module with `q_proj`, `k_proj`, `v_proj`, `out_proj` and head sizes; "
            f"{key!r} is a {type(attention).__name__} without {', '.join(f'`{m}`' for m in missing)}"
        )
    impl = attention_implementation(attention)
    if impl not in SUPPORTED_ATTENTION:
        raise ValueError(
            f"`mode='prefix'` supports the attention implementations {SUPPORTED_ATTENTION}, got "
            f"`_attn_implementation`={impl!r} at {key!r}; load the model with attn_implementation='sdpa' or 'eager'"
        )


def extended_mask(
    attention_mask: torch.Tensor | None, causal: bool, length: int, n_prompts: int, dtype: torch.dtype, device
) -> torch.Tensor | None:
    """Additive mask (B|1, 1, L, L + n): the tokens' own mask, then n always-visible prompt columns."""
    if attention_mask is None and not causal:
        return None  # vision: everything visible
    low = torch.finfo(dtype).min
    if attention_mask is None:  # sdpa without padding passes no mask, causality is implied
        future = torch.ones(length, length, dtype=torch.bool, device=device).triu(1)
        token_mask = torch.zeros(length, length, dtype=dtype, device=device).masked_fill(future, low)[None, None]
    elif attention_mask.dtype == torch.bool:  # sdpa with padding: True = may attend
        token_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=device).masked_fill(~attention_mask, low)
    else:  # eager: additive float mask
        token_mask = attention_mask.to(dtype).clamp(min=low)
    visible = torch.zeros(*token_mask.shape[:-1], n_prompts, dtype=dtype, device=device)
    return torch.cat([token_mask, visible], dim=-1)


def prefix_attention(
    attention: nn.Module,
    hidden_states: torch.Tensor,
    prompt_states: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    causal: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """CLIP attention with Q = hidden, K/V = [hidden ; prompts]; returns (output (B, L, width), weights or None).

    Args:
        attention: a `CLIPAttention`-like module (q/k/v/out projections, `num_heads`, `head_dim`, `scale`).
        hidden_states: LN1(x), (B, L, width).
        prompt_states: LN1(P), (n, width), already in the hidden dtype.
        attention_mask: what transformers passes the layer (float additive, boolean, or None).
        causal: the text tower (`is_causal=True`): without a mask, token keys are causally masked.
    """
    batch, length, _ = hidden_states.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    n = prompt_states.shape[0]

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    q = split(attention.q_proj(hidden_states))
    k = split(attention.k_proj(hidden_states))
    v = split(attention.v_proj(hidden_states))
    kp = split(attention.k_proj(prompt_states).unsqueeze(0)).expand(batch, -1, -1, -1)
    vp = split(attention.v_proj(prompt_states).unsqueeze(0)).expand(batch, -1, -1, -1)
    k, v = torch.cat([k, kp.to(k.dtype)], dim=2), torch.cat([v, vp.to(v.dtype)], dim=2)
    mask = extended_mask(attention_mask, causal, length, n, q.dtype, q.device)
    dropout = attention.dropout if attention.training else 0.0
    weights = None
    if attention_implementation(attention) == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=attention.scale)
    else:
        scores = torch.matmul(q, k.transpose(-1, -2)) * attention.scale
        if mask is not None:
            scores = scores + mask
        weights = F.dropout(scores.softmax(-1, dtype=torch.float32).to(q.dtype), p=dropout, training=dropout > 0)
        out = torch.matmul(weights, v)
    out = out.transpose(1, 2).reshape(batch, length, heads * head_dim)
    return attention.out_proj(out), weights


class PrefixAttention(DeepPromptLayer):
    """Wraps a layer's `self_attn`; with an active adapter its prompts become extra keys/values (see module doc).

    The layer's LN1 (`deep_norm`) is linked by the tuner after injection. With adapters disabled this is exactly the
    base attention.
    """

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.deep_norm: list[nn.Module] = []  # [LN1 of the owning layer], a plain reference (not a submodule)

    def check_spec(self, spec: LayerSpec, key: str) -> None:
        check_prefix_attention(self.base_layer, key)

    def set_norm(self, norm: nn.Module) -> None:
        self.deep_norm[:] = [norm]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        name = self.prompt_adapter()
        if name is None:
            return self.base_layer(hidden_states, attention_mask, **kwargs)
        check_prefix_attention(self.base_layer, "a prefix-prompted layer")  # the implementation may change later
        if not self.deep_norm:
            raise RuntimeError("prefix prompts have no linked layer norm; create the adapter with `get_peft_model`")
        prompt_states = self.deep_norm[0](self.prompts(name).to(hidden_states.dtype))
        causal = bool(kwargs.get("is_causal", False))
        return prefix_attention(
            self.base_layer, hidden_states, prompt_states.to(hidden_states.dtype), attention_mask, causal
        )
