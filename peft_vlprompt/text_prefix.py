"""Shared-prefix text encoding: the tokens every class prompt shares are encoded once, not once per class.

Under the text tower's causal mask the hidden states of a prompt's first k tokens depend only on those k tokens. With
unified context and the class name after it (CoOp, ProGrad, KgCoOp, the deep text prompts of IVLP / MaPLe / PromptSRC
/ RESTORE, whose per-layer prompts replace the same positions of every prompt), all prompts begin with the same
`[SOS] + context (+ template words)`. `shared_prefix_text_features` encodes that longest common prefix once per group
(batch 1 per group; CoCoOp: one group per image) and runs only each row's remaining tokens at every layer, attending
to the prefix's keys/values; positions continue after the prefix because the embeddings are taken from the full
prompt. Gradients from every row meet in the one prefix computation. The result equals the full text tower up to
float summation order (tests/test_shared_prefix.py).

It returns None, and the caller runs the full tower, wherever sharing would not be exact or would not pay: a
class-specific context (the same tokens, different parameters per class), token-embedding or layer wrappers it does
not know (DPL's template ensemble and supernet), an attention implementation other than eager/sdpa, or fewer than 2
shared tokens (e.g. the class name at the "front").
"""

import logging

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .backbones import Backbone, backbone_for
from .backbones.base import TextLayerParts
from .tuners.base import VLPromptLayer
from .tuners.cocoop.layer import ConditionalContextEmbedding
from .tuners.coop.layer import ContextEmbedding
from .tuners.deep_prompt.layer import DeepTextLayer, TextContextEmbedding, replace_slots
from .tuners.deep_prompt.prefix import PrefixAttention

logger = logging.getLogger(__name__)

MIN_SHARED_TOKENS = 2  # below this (SOS only) the prefix saves nothing worth a second code path


def _embedding_is_shared(token_embedding: nn.Module) -> bool:
    """True if equal token ids give the same embedding from the same parameters in every row."""
    if not isinstance(token_embedding, VLPromptLayer):
        return True
    if isinstance(token_embedding, ConditionalContextEmbedding):  # rows of one image share its pi(x)
        return True
    if isinstance(token_embedding, ContextEmbedding):
        names = token_embedding.enabled_adapters(token_embedding.coop_ctx)
        return not names or token_embedding.coop_ctx[names[0]].dim() == 2  # 3-D: one context per class
    return isinstance(token_embedding, TextContextEmbedding)


def _layer_plan(
    layers, backbone: Backbone
) -> list[tuple[TextLayerParts, torch.Tensor | None, PrefixAttention | None]] | None:
    """Per layer: its parts, the deep prompts replacing slots 1..n before it (or None), and a prefix-prompt wrapper
    on its attention (or None); None if a layer is not one this module reproduces exactly."""
    plan = []
    for layer in layers:
        prompts = None
        if isinstance(layer, DeepTextLayer):
            if layer.text_start != 1:  # slots not right after one start token: the full tower places them
                return None
            name = layer.prompt_adapter()
            prompts = None if name is None else layer.prompts(name)
            layer = layer.base_layer
        elif isinstance(layer, VLPromptLayer):
            return None
        parts = backbone.text_layer_parts(layer)
        if parts is None:
            return None
        wrapper = parts.attention
        if isinstance(wrapper, PrefixAttention):
            wrapper = wrapper if wrapper.prompt_adapter() is not None else None
        elif isinstance(wrapper, VLPromptLayer):
            return None  # e.g. DPL's supernet mixing
        else:
            wrapper = None
        plan.append((parts, prompts, wrapper))
    return plan


def _shared_length(ids: torch.Tensor, rep: torch.Tensor, groups: torch.Tensor, limit: int) -> int:
    """Length of the longest prefix on which every row equals its group's first row (at most `limit`)."""
    same = (ids[:, :limit] == ids[rep[groups], :limit]).all(dim=0)
    return limit if bool(same.all()) else int(same.int().argmin())


def shared_prefix_text_features(
    model: nn.Module, input_ids: torch.Tensor, groups: torch.Tensor | None = None
) -> torch.Tensor | None:
    """Projected pooled text features (N, D), as `model.get_text_features(input_ids=input_ids)` gives them, or None
    when the prompts cannot share a prefix exactly (the caller then runs the full tower).

    Args:
        model: a `CLIPModel` or a `PeftModel` wrapping one; its adapters (and any image conditioning / row classes
            set around the call) apply as in the full tower.
        input_ids: (N, L) prompt ids, padded after EOT.
        groups: (N,) group index in [0, P) of each row; only rows of one group share a prefix (CoCoOp: the image of
            each row). None: one group.
    """
    backbone = backbone_for(model)
    tower = backbone.text_tower(model)
    # sharing a prefix is exact only when later tokens cannot change earlier ones (causal attention)
    if tower is None or tower.attn_implementation not in backbone.text_attention_implementations:
        return None
    if not backbone.text_is_causal:
        return None
    if not _embedding_is_shared(tower.token_embedding):
        return None
    plan = _layer_plan(tower.layers, backbone)
    if plan is None:
        return None
    n_rows, length = input_ids.shape
    device = input_ids.device
    groups = torch.zeros(n_rows, dtype=torch.long, device=device) if groups is None else groups.to(device)
    n_groups = int(groups.max()) + 1
    # the first row of each group represents it (groups are given for every index in [0, P))
    order = torch.arange(n_rows, device=device)
    rep = torch.full((n_groups,), n_rows, dtype=torch.long, device=device).scatter_reduce(0, groups, order, "amin")
    eot = backbone.eot_index(input_ids).to(device)
    needed = max([MIN_SHARED_TOKENS] + [1 + p.shape[0] for _, p, _ in plan if p is not None])
    shared = _shared_length(input_ids, rep, groups, int(eot.min()))  # the EOT is always in each row's own part
    if shared < needed:
        return None
    embeds = tower.embeddings(input_ids=input_ids)  # full prompts: every position keeps its own position embedding
    # the ids match; the embeddings must too (e.g. a context slot that one layout puts inside the prefix)
    same = (embeds[:, :shared] == embeds[rep[groups], :shared]).all(dim=2).all(dim=0)
    if not bool(same.all()):
        shared = int(same.int().argmin())
        if shared < needed:
            return None
    prefix, rest = embeds[rep, :shared], embeds[:, shared:]
    for parts, prompts, wrapper in plan:
        if prompts is not None:
            prefix = replace_slots(prefix, prompts)
        if parts.checkpointed and parts.attention_base.training and torch.is_grad_enabled():
            prefix, rest = checkpoint(_layer, parts, wrapper, prefix, rest, groups, use_reentrant=False)
        else:
            prefix, rest = _layer(parts, wrapper, prefix, rest, groups)
    rest = tower.final_norm(rest)
    pooled = rest[torch.arange(n_rows, device=device), eot - shared]
    return tower.projection(pooled)


def _layer(parts: TextLayerParts, wrapper, prefix: torch.Tensor, rest: torch.Tensor, groups: torch.Tensor):
    """One pre-LN layer over the prefixes (P, k, d) and the rows' remaining tokens (N, s, d)."""
    extra = None
    if wrapper is not None:  # DPL prefix prompts: extra keys/values visible to every token, normed by LN1
        name = wrapper.prompt_adapter()
        extra = wrapper.deep_norm[0](wrapper.prompts(name).to(prefix.dtype)).to(prefix.dtype)
    attn_prefix, attn_rest = _attention(parts.attention_base, parts.norm1(prefix), parts.norm1(rest), groups, extra)
    prefix, rest = prefix + attn_prefix, rest + attn_rest
    return prefix + parts.mlp(parts.norm2(prefix)), rest + parts.mlp(parts.norm2(rest))


def _attention(attention: nn.Module, prefix: torch.Tensor, rest: torch.Tensor, groups: torch.Tensor, extra):
    """Causal self-attention of the prefixes, and of the rest with keys [its group's prefix ; its own causal keys ;
    extra prompts]: the key order of the full tower (DPL's prompts after the tokens), so only summation order may
    differ."""
    heads, head_dim = attention.num_heads, attention.head_dim

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], heads, head_dim).transpose(1, 2)

    def qkv(x: torch.Tensor):
        return split(attention.q_proj(x)), split(attention.k_proj(x)), split(attention.v_proj(x))

    q_p, k_p, v_p = qkv(prefix)
    q_r, k_r, v_r = qkv(rest)
    n_prefix, n_rest = prefix.shape[1], rest.shape[1]
    n_extra = 0 if extra is None else extra.shape[0]
    k_group, v_group = _rows(k_p, groups), _rows(v_p, groups)
    keys_p, values_p = [k_p], [v_p]
    keys_r, values_r = [k_group, k_r], [v_group, v_r]
    if extra is not None:
        k_x, v_x = split(attention.k_proj(extra).unsqueeze(0)), split(attention.v_proj(extra).unsqueeze(0))
        keys_p += [k_x.expand(k_p.shape[0], -1, -1, -1)]
        values_p += [v_x.expand(k_p.shape[0], -1, -1, -1)]
        keys_r += [k_x.expand(k_r.shape[0], -1, -1, -1)]
        values_r += [v_x.expand(k_r.shape[0], -1, -1, -1)]
    device = prefix.device
    # True = may attend; prefix: causal over itself; rest: every prefix key, causal over itself, every extra key
    causal_p = torch.ones(n_prefix, n_prefix, dtype=torch.bool, device=device).tril()
    causal_r = torch.ones(n_rest, n_rest, dtype=torch.bool, device=device).tril()
    mask_p = torch.cat([causal_p, torch.ones(n_prefix, n_extra, dtype=torch.bool, device=device)], dim=1)
    mask_r = torch.cat(
        [
            torch.ones(n_rest, n_prefix, dtype=torch.bool, device=device),
            causal_r,
            torch.ones(n_rest, n_extra, dtype=torch.bool, device=device),
        ],
        dim=1,
    )
    out_p = _attend(attention, q_p, torch.cat(keys_p, dim=2), torch.cat(values_p, dim=2), mask_p)
    out_r = _attend(attention, q_r, torch.cat(keys_r, dim=2), torch.cat(values_r, dim=2), mask_r)
    return out_p, out_r


def _rows(x: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """The group prefix's keys/values for each row: a broadcast view for one group, a gather otherwise."""
    if x.shape[0] == 1:
        return x.expand(groups.shape[0], -1, -1, -1)
    return x[groups]


def _attend(attention: nn.Module, q, k, v, allowed: torch.Tensor) -> torch.Tensor:
    """CLIP's attention (eager or sdpa, as configured) with a boolean may-attend mask; output (B, L, width)."""
    dropout = attention.dropout if attention.training else 0.0
    impl = getattr(attention.config, "_attn_implementation", None)
    if impl == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=attention.scale)
    else:  # transformers' eager path: additive finfo.min mask, float32 softmax
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill(
            ~allowed, torch.finfo(q.dtype).min
        )
        scores = torch.matmul(q, k.transpose(-1, -2)) * attention.scale + bias
        weights = F.dropout(scores.softmax(-1, dtype=torch.float32).to(q.dtype), p=dropout, training=dropout > 0)
        out = torch.matmul(weights, v)
    batch, _, length, _ = q.shape
    return attention.out_proj(out.transpose(1, 2).reshape(batch, length, -1))
