"""Feature-shift diagnostics: how much each encoder block's output moves when the adapter is switched on.

RESTORE (https://arxiv.org/abs/2403.06136) defines the feature shift as the variation of the per-block embeddings
after introducing the learned prompts. We measure it for any peft adapter, per modality and block l:

    shift_l = mean over real tokens of ‖h_l(prompted) − h_l(base)‖₂ / ‖h_l(base)‖₂

where h_l is the output of block l (`output_hidden_states`, without the embedding input). Text tokens are the
positions up to and including EOT (and inside `attention_mask` when given), prompt slots included; vision tokens are
the base pass's tokens, i.e. the backbone's `num_image_tokens` (CLS + patches on CLIP, the patches alone on SigLIP):
appended prompt tokens follow them and have no base counterpart. The base pass runs with every adapter
disabled and without gradients; the prompted pass keeps gradients, so the result can be a training loss.
"""

import contextlib
from collections.abc import Iterator, Sequence

import torch
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.other import AuxiliaryTrainingWrapper
from torch import nn

from .backbones import Backbone, backbone_for

_EPS = 1e-12


@contextlib.contextmanager
def adapters_off(model: nn.Module) -> Iterator[None]:
    """Disable every peft layer of `model` (restored on exit), without touching `requires_grad`."""
    layers = [m for m in model.modules() if isinstance(m, (BaseTunerLayer, AuxiliaryTrainingWrapper))]
    previous = [m._disable_adapters for m in layers]
    for layer in layers:
        layer._disable_adapters = True
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer._disable_adapters = value


def layer_shift(
    prompted: Sequence[torch.Tensor], base: Sequence[torch.Tensor], token_mask: torch.Tensor | None = None
) -> torch.Tensor:
    """Per-block relative shift (L,) from block outputs (B, T', d) / (B, T, d), T' >= T; `token_mask` (B, T) bool."""
    if len(prompted) != len(base):
        raise ValueError(f"got {len(prompted)} prompted and {len(base)} base hidden states")
    shifts = []
    for p, b in zip(prompted, base):
        p = p[:, : b.shape[1]].float()
        b = b.float()
        rel = (p - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(_EPS)
        if token_mask is None:
            shifts.append(rel.mean())
        else:
            mask = token_mask.to(rel.dtype)
            shifts.append((rel * mask).sum() / mask.sum().clamp_min(1))
    return torch.stack(shifts)


def text_token_mask(input_ids: torch.Tensor, backbone: Backbone, attention_mask=None) -> torch.Tensor:
    """(B, L) True for positions up to and including the pooled EOT (and inside `attention_mask`)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device)
    mask = positions[None] <= backbone.eot_index(input_ids)[:, None]
    if attention_mask is not None:
        mask = mask & attention_mask.bool()
    return mask


def feature_shift(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Per-block feature shift of the adapted model vs. the same model with adapters disabled.

    Args:
        model: a `PeftModel` (any adapter) or a `CLIPModel` with injected peft layers.
        input_ids: (C, L) prompts as the adapter expects them (e.g. `PromptClassifier.tokenize(...)`); skip for
            vision only.
        pixel_values: (B, 3, H, W); skip for text only.
        attention_mask: optional (C, L) text padding mask.

    Returns:
        `{"text": (text_layers,), "vision": (vision_layers,)}` (only the modalities given).
    """
    if input_ids is None and pixel_values is None:
        raise ValueError("`feature_shift` needs `input_ids`, `pixel_values` or both")
    backbone = backbone_for(model)
    text_tower, vision_tower = backbone.tower(model, "text"), backbone.tower(model, "vision")
    result = {}
    if input_ids is not None:
        kwargs = dict(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        prompted = text_tower(**kwargs).hidden_states[1:]
        with torch.no_grad(), adapters_off(model):
            base = text_tower(**kwargs).hidden_states[1:]
        result["text"] = layer_shift(prompted, base, text_token_mask(input_ids, backbone, attention_mask))
    if pixel_values is not None:
        inputs = backbone.vision_inputs(pixel_values)  # SigLIP 2: patches + spatial_shapes
        prompted = vision_tower(**inputs, output_hidden_states=True).hidden_states[1:]
        with torch.no_grad(), adapters_off(model):
            base = vision_tower(**inputs, output_hidden_states=True).hidden_states[1:]
        result["vision"] = layer_shift(prompted, base)
    return result
