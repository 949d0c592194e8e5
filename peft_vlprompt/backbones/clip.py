"""`transformers.CLIPModel` (OpenAI CLIP and checkpoints with its module tree): the `Backbone` of the CLIP family.

Module paths, sizes, EOT pooling, the shipped BPE tokenizer fallback, and the layer-by-layer text tower that
`peft_vlprompt.text_prefix` runs. A new family is a file like this one (see `base.py`).
"""

import functools
import logging
from dataclasses import dataclass

import torch
from torch import nn

from ..assets import clip_tokenizer_path
from .base import Backbone, TextLayerParts, TextTower, register, unwrap_model

logger = logging.getLogger(__name__)

TOKEN_EMBEDDING = "text_model.embeddings.token_embedding"
VISION_EMBEDDINGS = "vision_model.embeddings"
TEXT_PROJECTION = "text_projection"
VISUAL_PROJECTION = "visual_projection"
# `CLIPAttention`'s linear layers, by the letter the papers use for them
ATTENTION_PROJECTIONS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}
_PROBE = "a photo of a X cat."  # a folder's tokenizer must tokenize this like the shipped BPE to be used

unwrap_clip = unwrap_model  # the name the package used before the interface; kept for callers and tests


@register
@dataclass(frozen=True)
class ClipBackbone(Backbone):
    """Sizes and module names of a `transformers.CLIPModel` (fields: see `Backbone`).

    eos_token_id is 2 in legacy OpenAI configs, where pooling takes the argmax id (the EOT is the largest id)."""

    family = "clip"
    model_type = ("clip",)
    token_embedding = TOKEN_EMBEDDING
    vision_embeddings = VISION_EMBEDDINGS
    text_projection = TEXT_PROJECTION
    visual_projection = VISUAL_PROJECTION
    text_tower_path = "text_model"
    vision_tower_path = "vision_model"
    attention_projections = ATTENTION_PROJECTIONS
    text_pooling = "eot_argmax"
    text_is_causal = True  # `CLIPTextTransformer` always applies a causal mask
    text_padding = "longest"
    vision_pooling = "cls"  # pooled = post_layernorm(hidden[:, 0]): prompts appended after the patches never reach it
    logit_rule = "softmax"
    placeholder_token = "X"
    prompt_pad_token_id = 0  # `clip.tokenize` zero-pads (not the EOT the HF tokenizer pads with)
    text_attention_implementations = ("eager", "sdpa")  # what `peft_vlprompt.text_prefix` reproduces exactly

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from transformers import CLIPModel

        return isinstance(model, CLIPModel)

    @classmethod
    def from_model(cls, model: nn.Module) -> "ClipBackbone":
        clip = cls.own_model(model)
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

    def eot_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Position pooled by the text tower, exactly as `CLIPTextModel` picks it."""
        if self.eos_token_id == 2:  # legacy configs: EOT is the largest id
            return input_ids.to(torch.int).argmax(dim=-1)
        return (input_ids.to(torch.int) == self.eos_token_id).int().argmax(dim=-1)

    @classmethod
    def text_tower(cls, model: nn.Module) -> "TextTower":
        return text_tower(model)

    @classmethod
    def text_layer_parts(cls, layer: nn.Module) -> "TextLayerParts | None":
        return text_layer_parts(layer)

    @classmethod
    def default_tokenizer(cls):
        return shipped_tokenizer()

    @classmethod
    def load_tokenizer(cls, path: str):
        """The folder's CLIP tokenizer if it tokenizes like CLIP's BPE, else the BPE shipped with the package (toy
        and converted checkpoints often come without vocabulary files)."""
        from transformers import CLIPTokenizer

        try:
            tokenizer = CLIPTokenizer.from_pretrained(path)
        except (OSError, ValueError, TypeError):
            tokenizer = None
        shipped = shipped_tokenizer()
        # transformers builds an empty tokenizer from a folder without vocabulary files: check it really tokenizes
        if tokenizer is None or tokenizer(_PROBE)["input_ids"] != shipped(_PROBE)["input_ids"]:
            logger.info("%s has no usable CLIP tokenizer; using the CLIP BPE tokenizer shipped with the package", path)
            return shipped
        return tokenizer


@functools.lru_cache(maxsize=1)
def shipped_tokenizer():
    """OpenAI's CLIP tokenizer from the files shipped with the package (no Hub access needed)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer_path())


# -- the text tower, for encoders that run it layer by layer (shared-prefix text encoding) --------------------------
TEXT_IS_CAUSAL = ClipBackbone.text_is_causal
TEXT_ATTENTION_IMPLEMENTATIONS = ClipBackbone.text_attention_implementations


def text_tower(model: nn.Module) -> TextTower:
    clip = unwrap_model(model)
    text = clip.text_model
    return TextTower(
        embeddings=text.embeddings,
        token_embedding=text.embeddings.token_embedding,
        layers=tuple(text.encoder.layers),
        final_norm=text.final_layer_norm,
        projection=clip.text_projection,
        attn_implementation=getattr(clip.config.text_config, "_attn_implementation", None),
    )


def text_layer_parts(layer: nn.Module) -> TextLayerParts | None:
    """The parts of a text encoder layer, or None if `layer` is not a `CLIPEncoderLayer` (the caller falls back)."""
    from transformers.models.clip.modeling_clip import CLIPAttention, CLIPEncoderLayer

    return encoder_layer_parts(layer, CLIPEncoderLayer, CLIPAttention)


def encoder_layer_parts(layer: nn.Module, layer_class: type, attention_class: type) -> TextLayerParts | None:
    """The parts of a CLIP-layout encoder layer (`layer_norm1`, `self_attn`, `layer_norm2`, `mlp`) if `layer` is a
    `layer_class` whose (possibly peft-wrapped) attention is an `attention_class`, else None."""
    if not isinstance(layer, layer_class):
        return None
    attention = layer.self_attn
    base = getattr(attention, "base_layer", attention)
    if not isinstance(base, attention_class):
        return None
    return TextLayerParts(
        norm1=layer.layer_norm1,
        attention=attention,
        attention_base=base,
        norm2=layer.layer_norm2,
        mlp=layer.mlp,
        checkpointed=bool(getattr(layer, "gradient_checkpointing", False)),
    )
