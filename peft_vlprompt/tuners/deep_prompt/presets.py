"""Configs reproducing the published deep-prompt settings, sized to a given model.

Sources (`muzairkhattak/multimodal-prompt-learning@69bce21`, `muzairkhattak/PromptSRC@bb95c77`):
- IVLP: `configs/trainers/IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml`: 2 text + 2 vision prompts, depth 12 / 12.
- IVLP in the PromptSRC repo: `configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml`: 4 + 4, depth 9.
- VPT-deep: `configs/trainers/VPT/vit_b16_c2_ep5_batch4_4.yaml`: 8 vision prompts, depth 12; the text stays
  "a photo of a {}." (`trainers/vpt.py` FixedEmbeddings).
- Deep language prompting: `configs/trainers/IVLP/..._4ctx_language_only.yaml`: 4 text prompts, depth 12.
- MaPLe: `configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml`: 2 coupled prompts, depth 9, init "a photo of a".
- PromptSRC: `configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml`: IVLP 4 + 4, depth 9.

"depth d" means prompts at the input and at layers 1..d-1. A depth deeper than the model's tower is clipped to the
tower's layer count (logged as a warning), so the presets' paper depths also build small test models. The training
loop clips only a preset's depth: a depth the user gave deeper than the model is refused there
(`peft_vlprompt.training.method_checks.check_user_depths`).

Every preset with vision prompts (IVLP, VPT-deep, MaPLe, PromptSRC) works on any family: on attention-pooling families
(`Backbone.vision_pooling == "head"`, e.g. SigLIP) the appended vision prompts are dropped before the pooling head.
"""

import logging

from torch import nn

from ...backbones import Backbone, backbone_for
from .config import DeepPromptConfig, PromptSRCConfig

logger = logging.getLogger(__name__)

CTX_INIT = "a photo of a"
VPT_TEXT_TEMPLATE = "a photo of a {}."


def tower_layers(model_or_layers: Backbone | nn.Module | int | tuple[int, int]) -> tuple[int, int]:
    """(text layers, vision layers) of a backbone, a (peft-wrapped) CLIP model, an int (both) or a pair."""
    if isinstance(model_or_layers, Backbone):
        return model_or_layers.text_layers, model_or_layers.vision_layers
    if isinstance(model_or_layers, nn.Module):
        backbone = backbone_for(model_or_layers)
        return backbone.text_layers, backbone.vision_layers
    if isinstance(model_or_layers, int) and not isinstance(model_or_layers, bool):
        return model_or_layers, model_or_layers
    if isinstance(model_or_layers, tuple) and len(model_or_layers) == 2:
        return int(model_or_layers[0]), int(model_or_layers[1])
    raise TypeError(
        f"expected a Backbone, a supported model, a layer count or a (text, vision) pair, got {model_or_layers!r}"
    )


def depth_lengths(n_ctx: int, depth: int, layers: int, name: str = "depth", ctx_name: str = "n_ctx") -> list[int]:
    """`[n_ctx] * depth + [0] * (layers - depth)`, with `depth` clipped to `layers`; errors name the arguments
    `name` (the depth) and `ctx_name` (the length)."""
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
        raise ValueError(f"`{name}` must be an int >= 0, got {depth!r}")
    if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 0:
        raise ValueError(f"`{ctx_name}` must be an int >= 0, got {n_ctx!r}")
    if depth > layers:
        logger.warning("`%s`=%d is deeper than the model's %d layers; using %d", name, depth, layers, layers)
        depth = layers
    return [n_ctx] * depth + [0] * (layers - depth)


def ivlp_preset(
    model_or_layers,
    n_ctx_text: int = 2,
    n_ctx_vision: int = 2,
    depth: int = 12,
    vision_depth: int | None = None,
    ctx_init: str | None = CTX_INIT,
    **kwargs,
) -> DeepPromptConfig:
    """Independent vision-language prompting (IVLP): 2 + 2 prompts at depth 12 (pass `n_ctx_text=4,
    n_ctx_vision=4, depth=9` for the PromptSRC repo's IVLP). The text context starts from "a photo of a"."""
    text_layers, vision_layers = tower_layers(model_or_layers)
    return DeepPromptConfig(
        text_lengths=depth_lengths(n_ctx_text, depth, text_layers, ctx_name="n_ctx_text"),
        vision_lengths=depth_lengths(
            n_ctx_vision,
            depth if vision_depth is None else vision_depth,
            vision_layers,
            "depth" if vision_depth is None else "vision_depth",
            "n_ctx_vision",
        ),  # fmt: skip
        ctx_init=ctx_init,
        **kwargs,
    )


def vpt_deep_preset(
    model_or_layers, n_ctx_vision: int = 8, depth: int = 12, text_template: str = VPT_TEXT_TEMPLATE, **kwargs
) -> DeepPromptConfig:
    """VPT-deep: 8 vision prompts at depth 12; the text is the fixed template "a photo of a {}."."""
    _, vision_layers = tower_layers(model_or_layers)
    return DeepPromptConfig(
        vision_lengths=depth_lengths(n_ctx_vision, depth, vision_layers, ctx_name="n_ctx_vision"),
        text_template=text_template,
        **kwargs,
    )


def deep_language_preset(
    model_or_layers, n_ctx_text: int = 4, depth: int = 12, ctx_init: str | None = CTX_INIT, **kwargs
) -> DeepPromptConfig:
    """Deep language prompting (IVLP language-only): 4 text prompts at depth 12, no vision prompts."""
    text_layers, _ = tower_layers(model_or_layers)
    text = depth_lengths(n_ctx_text, depth, text_layers, ctx_name="n_ctx_text")
    return DeepPromptConfig(text_lengths=text, ctx_init=ctx_init, **kwargs)


def maple_preset(
    model_or_layers, n_ctx: int = 2, depth: int = 9, ctx_init: str | None = CTX_INIT, **kwargs
) -> DeepPromptConfig:
    """MaPLe: 2 text prompts at depth 9 with coupled vision prompts (learned text->vision linear maps), "a photo of
    a" init (the learned 2 vectors replace "a photo"; "of a" stays). Cross-dataset MaPLe uses `depth=3`."""
    text_layers, vision_layers = tower_layers(model_or_layers)
    text = depth_lengths(n_ctx, depth, text_layers)
    vision = depth_lengths(n_ctx, min(depth, text_layers), vision_layers)
    return DeepPromptConfig(text_lengths=text, vision_lengths=vision, coupling="maple", ctx_init=ctx_init, **kwargs)


def promptsrc_preset(
    model_or_layers, n_ctx_text: int = 4, n_ctx_vision: int = 4, depth: int = 9, **kwargs
) -> PromptSRCConfig:
    """PromptSRC: IVLP 4 + 4 at depth 9 with its loss weights and GPA settings (see `PromptSRCConfig`)."""
    text_layers, vision_layers = tower_layers(model_or_layers)
    return PromptSRCConfig(
        text_lengths=depth_lengths(n_ctx_text, depth, text_layers, ctx_name="n_ctx_text"),
        vision_lengths=depth_lengths(n_ctx_vision, depth, vision_layers, ctx_name="n_ctx_vision"),
        **kwargs,
    )
