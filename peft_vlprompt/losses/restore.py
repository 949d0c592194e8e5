"""RESTORE's feature-shift consistency term (Yang et al., https://arxiv.org/abs/2403.06136), two definitions.

- `"prompt_norm"` (the released code, `Yaphabates/RESTORE_` trainer `MaPLe_FSA`): the shift of a deep layer l is the
  Gram norm of its prompts relative to its value at creation, and the two towers are compared per layer:

      L_fs = Σ_l ( ‖P_t,lᵀP_t,l‖_F / n⁰_t,l − ‖P_v,lᵀP_v,l‖_F / n⁰_v,l )²

  over the deep layers (index >= 1 with coupled prompts); P_v,l is the coupled projection of P_t,l and the initial
  norms n⁰ are the adapter's saved `restore_init_norms`.
- `"features"` (the paper's definition): the shift of block l is the mean relative change of its output tokens with
  vs. without the adapter (`peft_vlprompt.diagnostics.feature_shift`), and

      L_fs = Σ_{l < min(L_t, L_v)} ( shift_text,l − shift_vision,l )²

  comparing blocks of equal index (the first min(L_t, L_v) when the towers differ in depth).
"""

import torch
from torch import nn

from ..diagnostics import feature_shift
from ..tuners.restore.model import gram_norm, restore_adapter, restore_prompt_pairs, surgery_adapters


def restore_prompt_norm_loss(model: nn.Module, adapter_name: str | None = None) -> torch.Tensor:
    """The released code's Σ_l (‖P_tᵀP_t‖_F / n⁰_t − ‖P_vᵀP_v‖_F / n⁰_v)² (a scalar with gradients)."""
    adapter_name, _ = restore_adapter(model, adapter_name)
    pairs = restore_prompt_pairs(model, adapter_name)
    text_adapter, vision_adapter = surgery_adapters(model)
    init_t = text_adapter.restore_init_norms[adapter_name]
    init_v = vision_adapter.restore_init_norms[adapter_name]
    if not pairs:
        return init_t.new_zeros(())
    shift_t = torch.stack([gram_norm(p_t) for p_t, _ in pairs]) / init_t.float()
    shift_v = torch.stack([gram_norm(p_v) for _, p_v in pairs]) / init_v.float()
    return ((shift_t - shift_v) ** 2).sum()


def restore_feature_shift_loss(text_shift: torch.Tensor, vision_shift: torch.Tensor) -> torch.Tensor:
    """Σ_l (text_shift[l] − vision_shift[l])² over the first min(L_t, L_v) blocks."""
    if text_shift.dim() != 1 or vision_shift.dim() != 1:
        raise ValueError(
            f"shifts must be 1-D (one value per block), got {tuple(text_shift.shape)} and {tuple(vision_shift.shape)}"
        )
    n = min(text_shift.shape[0], vision_shift.shape[0])
    return ((text_shift[:n] - vision_shift[:n]) ** 2).sum()


def restore_losses(
    model: nn.Module,
    input_ids: torch.Tensor | None = None,
    pixel_values: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    definition: str | None = None,
    weight: float | None = None,
    shifts: dict[str, torch.Tensor] | None = None,
    adapter_name: str | None = None,
) -> dict[str, torch.Tensor]:
    """RESTORE's term to add to the cross-entropy: `{"restore_fs": weight · L_fs}`.

    Args:
        model: the `PeftModel` with a RESTORE adapter.
        input_ids / pixel_values / attention_mask: the batch's class prompts and images (`"features"` only; two
            extra tower passes, one without gradients). Or pass `shifts` from `feature_shift` yourself.
        definition: `"prompt_norm"` or `"features"`; defaults to the adapter's `fs_definition`.
        weight: defaults to the adapter's `fs_weight`.
    """
    adapter_name, config = restore_adapter(model, adapter_name)
    definition = config.fs_definition if definition is None else definition
    weight = config.fs_weight if weight is None else weight
    if definition == "prompt_norm":
        loss = restore_prompt_norm_loss(model, adapter_name)
    elif definition == "features":
        if shifts is None:
            if input_ids is None or pixel_values is None:
                raise ValueError("`definition='features'` needs `input_ids` and `pixel_values` (or `shifts`)")
            shifts = feature_shift(model, input_ids, pixel_values, attention_mask)
        loss = restore_feature_shift_loss(shifts["text"], shifts["vision"])
    else:
        raise ValueError(f"`definition` must be 'prompt_norm' or 'features', got {definition!r}")
    return {"restore_fs": loss * weight}
