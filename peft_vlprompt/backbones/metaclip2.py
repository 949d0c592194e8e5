"""`transformers.MetaClip2Model` (MetaCLIP 2, worldwide CLIP): the `Backbone` of the MetaCLIP 2 family.

Its module tree is CLIP's, name for name and shape for shape (`MetaClip2TextModel` / `MetaClip2VisionModel`, pre-LN
encoder layers with `self_attn.{q,k,v,out}_proj`, `text_projection`, `visual_projection`, CLS vision pooling,
causal text attention, softmax logits), so this family subclasses `ClipBackbone`. What differs:
- Text pooling is always the FIRST `eos_token_id` in the ids: released configs set `eos_token_id = 2` (XLM-V's
  `</s>`), where CLIP's legacy rule would take the argmax id instead (`MetaClip2TextModel` has no such rule).
- The tokenizer is XLM-V's sentencepiece (`<s>` = 0, `<pad>` = 1, `</s>` = 2; one start token, so context slots
  still start at position 1), not CLIP's BPE: the package ships none, so `default_tokenizer()` is None (configs with
  `ctx_init` need `config.tokenize_with(tokenizer)`) and `load_tokenizer` takes the checkpoint's own; rows the
  package builds itself (DPL's template ensemble) are padded with that tokenizer's `<pad>`, not `clip.tokenize`'s 0.
"""

from dataclasses import dataclass

import torch
from torch import nn

from .base import Backbone, TextLayerParts, register
from .clip import ClipBackbone, encoder_layer_parts


@register
@dataclass(frozen=True)
class MetaClip2Backbone(ClipBackbone):
    """Sizes and module names of a `transformers.MetaClip2Model` (fields: see `Backbone`)."""

    family = "metaclip2"
    model_type = ("metaclip_2",)
    text_pooling = "first_eos"
    prompt_pad_token_id = None  # XLM-V's `<pad>`, as the checkpoint's own tokenizer pads (not `clip.tokenize`'s 0)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from transformers import MetaClip2Model

        return isinstance(model, MetaClip2Model)

    def eot_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The first EOS of each row, exactly as `MetaClip2TextModel` pools (no argmax rule for `eos_token_id == 2`)."""
        return (input_ids.to(torch.int) == self.eos_token_id).int().argmax(dim=-1)

    @classmethod
    def text_layer_parts(cls, layer: nn.Module) -> TextLayerParts | None:
        """The parts of a `MetaClip2EncoderLayer` (same math as CLIP's), or None for anything else (full tower)."""
        from transformers.models.metaclip_2.modeling_metaclip_2 import MetaClip2Attention, MetaClip2EncoderLayer

        return encoder_layer_parts(layer, MetaClip2EncoderLayer, MetaClip2Attention)

    @classmethod
    def default_tokenizer(cls):
        return None  # XLM-V's sentencepiece is not shipped with the package

    @classmethod
    def load_tokenizer(cls, path: str):
        """The checkpoint's own tokenizer (never CLIP's BPE: the vocabularies differ)."""
        return Backbone.load_tokenizer.__func__(cls, path)
