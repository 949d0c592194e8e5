"""`transformers.SiglipModel` (SigLIP, sigmoid loss): the `Backbone` of the SigLIP family.

How SigLIP differs from CLIP, and what prompts mean on it:
- Text attention is bidirectional (`SiglipTextModel` builds a bidirectional mask): context tokens see the class name
  and padding, so the "pad to the longest prompt" and shared-prefix shortcuts are not exact; text is padded to
  `max_position_embeddings` as SigLIP was trained (`text_padding = "max_length"`), with no attention mask, as
  `get_text_features(input_ids=...)` runs it.
- The text is pooled at the last position (`last_hidden_state[:, -1]`, usually padding) and projected by
  `text_model.head`; `eot_index` gives the first EOS (where the prompt text ends), which CoOp's front/middle layouts
  count back from.
- Vision has no CLS token: all patch tokens go through `vision_model.post_layernorm` and the attention-pooling head
  (`vision_model.head`, which is also the vision "projection"). Tokens appended to the vision sequence would be
  pooled by it, so the rule (`vision_pooling = "head"`) is: appended vision prompts (replace mode: IVLP, VPT-deep,
  MaPLe, PromptSRC, RESTORE) take part in every encoder layer as on CLIP, and are dropped at the input of
  `post_layernorm` (`vision_head_input`), so the norm and the head see exactly the patch tokens, as in the base
  model. The prompts act on the image features only through the patches' attention to them. Prefix vision prompts
  (DPL, `mode="prefix"`) only add keys/values, so the head never sees them either.
- Logits are `exp(logit_scale) * cos + logit_bias` (`logit_rule = "sigmoid"`).
- SigLIP's sentencepiece tokenizer is not shipped with the package (`default_tokenizer()` is None): configs with
  `ctx_init` need `config.tokenize_with(tokenizer)`. SigLIP's own tokenizer adds no start token, so context slots
  start at position 0 (`text_start_tokens = 0`); `PromptClassifier` sets them from the tokenizer it is given.

SigLIP 2's FixRes checkpoints are `SiglipModel`s (this family); `Siglip2Model` (NaFlex) is `siglip2.py`, a subclass.
"""

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .base import Backbone, register

logger = logging.getLogger(__name__)


@register
@dataclass(frozen=True)
class SiglipBackbone(Backbone):
    """Sizes and module names of a `transformers.SiglipModel` (fields: see `Backbone`)."""

    family = "siglip"
    model_type = ("siglip",)
    token_embedding = "text_model.embeddings.token_embedding"
    vision_embeddings = "vision_model.embeddings"
    text_projection = "text_model.head"
    visual_projection = "vision_model.head"  # the attention-pooling head: SigLIP has no separate vision projection
    text_tower_path = "text_model"
    vision_tower_path = "vision_model"
    attention_projections = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "out_proj"}  # `SiglipAttention`
    text_pooling = "last"
    text_is_causal = False
    text_padding = "max_length"
    vision_pooling = "head"
    vision_head_input = "vision_model.post_layernorm"  # appended vision prompts are dropped at its input
    logit_rule = "sigmoid"
    placeholder_token = "X"
    text_start_tokens = 0  # the sentencepiece tokenizer only appends `</s>`

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from transformers import SiglipModel

        return isinstance(model, SiglipModel)

    display_name = "SigLIP"  # in messages

    @classmethod
    def from_model(cls, model: nn.Module) -> "SiglipBackbone":
        siglip = cls.own_model(model)
        text, vision = siglip.config.text_config, siglip.config.vision_config
        if not vision.vision_use_head:
            raise ValueError(
                f"the {cls.display_name} vision tower has no pooling head (`vision_use_head=False`): no image features"
            )
        return cls(**cls.fields_from_configs(text, vision))

    @classmethod
    def fields_from_configs(cls, text, vision) -> dict:
        """The backbone's sizes from the text and vision configs (a subclass adds its own)."""
        return dict(
            text_width=text.hidden_size,
            vision_width=vision.hidden_size,
            text_layers=text.num_hidden_layers,
            vision_layers=vision.num_hidden_layers,
            projection_dim=text.projection_size,
            max_positions=text.max_position_embeddings,
            vocab_size=text.vocab_size,
            num_image_tokens=cls.image_tokens(vision),
            eos_token_id=text.eos_token_id,
        )

    @classmethod
    def image_tokens(cls, vision) -> int:
        return (vision.image_size // vision.patch_size) ** 2  # patches only: no CLS token

    def eot_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The first EOS of each row (the end of the prompt text; the tower itself pools the last position)."""
        is_eos = input_ids.to(torch.int) == self.eos_token_id
        last = torch.full_like(input_ids[:, 0], input_ids.shape[1] - 1)
        return torch.where(is_eos.any(dim=-1), is_eos.int().argmax(dim=-1), last)
