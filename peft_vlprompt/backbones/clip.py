"""`transformers.CLIPModel`: module paths, sizes and the text pooling rule.

Every other module asks this one where things are, so a new backbone (e.g. an open_clip model) is one new file.
"""

from dataclasses import dataclass

import torch
from torch import nn
from transformers import CLIPModel

TOKEN_EMBEDDING = "text_model.embeddings.token_embedding"
VISION_EMBEDDINGS = "vision_model.embeddings"
TEXT_PROJECTION = "text_projection"
VISUAL_PROJECTION = "visual_projection"
# `CLIPAttention`'s linear layers, by the letter the papers use for them
ATTENTION_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}


def unwrap_clip(model: nn.Module) -> nn.Module:
    """Return the `CLIPModel` inside a `PeftModel`, a tuner, a DDP/compiled wrapper, or the model itself."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if isinstance(model, CLIPModel):
            return model
        for attr in ("_orig_mod", "module", "base_model", "model"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module) and inner is not model:
                model = inner
                break
        else:
            break
    return model


@dataclass(frozen=True)
class ClipBackbone:
    """Sizes and module names of a `transformers.CLIPModel`.

    Attributes:
        text_width / vision_width: hidden sizes of the two towers.
        text_layers / vision_layers: number of encoder layers.
        projection_dim: size of the joint embedding space.
        max_positions: the text tower's maximum sequence length (77 for OpenAI CLIP).
        vocab_size: text vocabulary size (49,408 for CLIP's BPE).
        num_image_tokens: CLS + patch tokens of the vision tower.
        eos_token_id: the config's EOS id (2 in legacy OpenAI configs, where pooling takes the argmax id).
    """

    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int
    projection_dim: int
    max_positions: int
    vocab_size: int
    num_image_tokens: int
    eos_token_id: int

    @classmethod
    def from_model(cls, model: nn.Module) -> "ClipBackbone":
        clip = unwrap_clip(model)
        if not isinstance(clip, CLIPModel):
            raise TypeError(
                f"peft_vlprompt supports `transformers.CLIPModel` only, got {type(clip).__name__}; "
                "load the model with `CLIPModel.from_pretrained(...)`"
            )
        text, vision = clip.config.text_config, clip.config.vision_config
        return cls(
            text_width=text.hidden_size,
            vision_width=vision.hidden_size,
            text_layers=text.num_hidden_layers,
            vision_layers=vision.num_hidden_layers,
            projection_dim=clip.config.projection_dim,
            max_positions=text.max_position_embeddings,
            vocab_size=text.vocab_size,
            num_image_tokens=(vision.image_size // vision.patch_size) ** 2 + 1,
            eos_token_id=text.eos_token_id,
        )

    @staticmethod
    def text_layer(index: int) -> str:
        return f"text_model.encoder.layers.{index}"

    @staticmethod
    def vision_layer(index: int) -> str:
        return f"vision_model.encoder.layers.{index}"

    @staticmethod
    def text_attention(index: int) -> str:
        return f"text_model.encoder.layers.{index}.self_attn"

    @staticmethod
    def vision_attention(index: int) -> str:
        return f"vision_model.encoder.layers.{index}.self_attn"

    @staticmethod
    def attention_norm(attention_path: str) -> str:
        """The pre-attention LayerNorm (LN1) of the layer owning `attention_path` (prefix prompts are normed by it)."""
        return attention_path.rsplit(".", 1)[0] + ".layer_norm1"

    def eot_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position pooled by the text tower, exactly as `CLIPTextModel` picks it."""
        if self.eos_token_id == 2:  # legacy configs: EOT is the largest id
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids.to(torch.int) == self.eos_token_id).int().argmax(dim=-1)


def attention_projections(
    text_layers: int, vision_layers: int, projections=("q", "k", "v"), towers=("text", "vision")
) -> list[str]:
    """Full module names of the attention projections `projections` (of q, k, v, o) in every layer of `towers`
    (CLIP-LoRA's targets: q/k/v of every layer of both towers). Full names, so peft matches exactly these."""
    bad = sorted(set(projections) - set(ATTENTION_PROJECTIONS)) + sorted(set(towers) - {"text", "vision"})
    if bad or not projections or not towers:
        raise ValueError(f"attention projections must be among {sorted(ATTENTION_PROJECTIONS)} and towers among "
                         f"['text', 'vision'] (neither empty), got {list(projections)} and {list(towers)}")  # fmt: skip
    names = []
    for tower in towers:
        layers, path = (text_layers, ClipBackbone.text_attention) if tower == "text" else (
            vision_layers, ClipBackbone.vision_attention)  # fmt: skip
        names += [f"{path(i)}.{ATTENTION_PROJECTIONS[p]}" for i in range(layers) for p in projections]
    return names


# -- the text tower, for encoders that run it layer by layer (shared-prefix text encoding) --------------------------
TEXT_IS_CAUSAL = True  # CLIP's text tower always applies a causal mask (`CLIPTextTransformer`)
TEXT_ATTENTION_IMPLEMENTATIONS = ("eager", "sdpa")  # what `peft_vlprompt.text_prefix` reproduces exactly


@dataclass(frozen=True)
class TextTower:
    """The text tower's parts in running order: `embeddings(input_ids=...)` (token + position embeddings, with any
    wrapper on the token embedding), the encoder `layers` (possibly wrapped), `final_norm`, then pooling at the EOT
    position and `projection` (possibly wrapped)."""

    embeddings: nn.Module
    token_embedding: nn.Module
    layers: tuple[nn.Module, ...]
    final_norm: nn.Module
    projection: nn.Module
    attn_implementation: str | None


def text_tower(model: nn.Module) -> TextTower:
    clip = unwrap_clip(model)
    text = clip.text_model
    return TextTower(
        embeddings=text.embeddings,
        token_embedding=text.embeddings.token_embedding,
        layers=tuple(text.encoder.layers),
        final_norm=text.final_layer_norm,
        projection=clip.text_projection,
        attn_implementation=getattr(clip.config.text_config, "_attn_implementation", None),
    )


@dataclass(frozen=True)
class TextLayerParts:
    """One pre-LN CLIP encoder layer: x + attention(norm1(x)), then x + mlp(norm2(x)).

    `attention` is the (possibly wrapped) `self_attn`; `attention_base` the `CLIPAttention` inside it, whose q/k/v/out
    projections, `num_heads`, `head_dim`, `scale` and `dropout` the caller uses. `checkpointed`: transformers'
    gradient checkpointing is on for this layer (`model.gradient_checkpointing_enable()`).
    """

    norm1: nn.Module
    attention: nn.Module
    attention_base: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    checkpointed: bool


def text_layer_parts(layer: nn.Module) -> TextLayerParts | None:
    """The parts of a text encoder layer, or None if `layer` is not a `CLIPEncoderLayer` (the caller falls back)."""
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

    if not isinstance(layer, CLIPEncoderLayer):
        return None
    attention = layer.self_attn
    base = getattr(attention, "base_layer", attention)
    if not isinstance(base, CLIPAttention):
        return None
    return TextLayerParts(
        norm1=layer.layer_norm1,
        attention=attention,
        attention_base=base,
        norm2=layer.layer_norm2,
        mlp=layer.mlp,
        checkpointed=bool(getattr(layer, "gradient_checkpointing", False)),
    )
