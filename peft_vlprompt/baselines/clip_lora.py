"""CLIP-LoRA (Zanella & Ben Ayed, "Low-Rank Few-Shot Adaptation of Vision-Language Models", CVPR Workshops 2024)
as a plain peft `LoraConfig`: the adapter saves, loads and merges like any peft LoRA adapter.

The released recipe: LoRA of rank 2, alpha 1 (scaling alpha / r = 0.5), dropout 0.25 on the query, key and value
projections of every attention layer of both towers; AdamW (lr 2e-4, weight decay 1e-2, betas (0.9, 0.999)), cosine
annealing per iteration to 1e-6 over 500 x shots iterations, batch 32, cross-entropy on the logits of one hand-crafted
template, "a photo of a {}.". The classifier is `PromptClassifier` with that template: the LoRA-modified text tower
encodes the template prompts, the LoRA-modified image tower the images.
"""

from peft import LoraConfig
from torch import nn

from ..backbones import Backbone, attention_projections, family_of
from ..tuners.deep_prompt.presets import tower_layers

# The published settings (the released `run_utils.py` defaults), also read by the training preset and the tests
CLIP_LORA_RECIPE = {
    "r": 2,
    "lora_alpha": 1,
    "lora_dropout": 0.25,
    "projections": ("q", "k", "v"),
    "towers": ("text", "vision"),
    "lr": 2e-4,
    "weight_decay": 1e-2,
    "betas": (0.9, 0.999),
    "eta_min": 1e-6,
    "batch_size": 32,
    "iterations_per_shot": 500,
    "template": "a photo of a {}.",
}


def clip_lora_config(
    model_or_layers,
    r: int = CLIP_LORA_RECIPE["r"],
    lora_alpha: float = CLIP_LORA_RECIPE["lora_alpha"],
    lora_dropout: float = CLIP_LORA_RECIPE["lora_dropout"],
    projections: list[str] | tuple[str, ...] = CLIP_LORA_RECIPE["projections"],
    towers: list[str] | tuple[str, ...] = CLIP_LORA_RECIPE["towers"],
    **kwargs,
) -> LoraConfig:
    """CLIP-LoRA's `LoraConfig` for a backbone (a `Backbone`, a supported model, a layer count or a (text, vision)
    pair): `projections` (of "q", "k", "v", "o") of every layer of `towers` ("text", "vision"); other `LoraConfig`
    fields through `kwargs`. The module names come from `peft_vlprompt.backbones`."""
    if isinstance(r, bool) or not isinstance(r, int) or r < 1:
        raise ValueError(f"`r` must be an int >= 1, got {r!r}")
    if not 0 <= lora_dropout < 1:
        raise ValueError(f"`lora_dropout` must be in [0, 1), got {lora_dropout!r}")
    if "target_modules" in kwargs:
        raise ValueError("`target_modules` is computed from `projections` and `towers`: set those instead")
    text_layers, vision_layers = tower_layers(model_or_layers)
    family = model_or_layers if isinstance(model_or_layers, Backbone) else None  # counts alone: the default family
    family = family_of(model_or_layers) if isinstance(model_or_layers, nn.Module) else family
    targets = attention_projections(text_layers, vision_layers, tuple(projections), tuple(towers), family)
    return LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=targets, bias="none",
                      **kwargs)  # fmt: skip
