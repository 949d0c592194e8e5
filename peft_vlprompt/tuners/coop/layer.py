"""CoOp's learnable context: a wrapper around the text token embedding."""

import torch
from torch import nn

from ...backbones import Backbone
from ..base import VLPromptLayer
from .config import CoOpConfig


def initial_context(config: CoOpConfig, token_embedding: nn.Embedding) -> torch.Tensor:
    """(n_ctx, d) or (n_classes, n_ctx, d) initial context, on the embedding's device and dtype."""
    weight = token_embedding.weight
    width = weight.shape[1]
    if config.ctx_init is None:
        shape = (config.n_classes, config.n_ctx, width) if config.per_class_context else (config.n_ctx, width)
        ctx = torch.empty(shape, device=weight.device, dtype=torch.float32)
        nn.init.normal_(ctx, std=config.init_std)
        return ctx.to(weight.dtype)
    # the first `n_init` tokens of `ctx_init` (all of them unless split by words) fill the last positions (all
    # positions unless `pad_ctx_init`)
    ids = torch.tensor(config.ctx_init_token_ids[: config.n_init], device=weight.device)
    words = weight.detach()[ids].clone()
    ctx = torch.zeros(config.n_ctx, width, device=weight.device, dtype=weight.dtype)
    ctx[config.n_ctx - len(ids) :] = words
    if config.per_class_context:
        ctx = ctx.unsqueeze(0).repeat(config.n_classes, 1, 1)
    return ctx


def context_slots(
    input_ids: torch.Tensor, n_ctx: int, position: str, eot_index: torch.Tensor | None = None, start: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """(is_slot, slot), both (B, L): where the `n_ctx` context vectors go in prompts of the layout `position`, and
    which vector each slot takes. Located by position, as the released code does, never by token id, so a class name
    containing the placeholder word is fine. `start`: the special tokens the tokenizer puts before the text (CLIP's
    SOS: 1; SigLIP: 0). `"end"`: positions start..start+n_ctx-1; `"front"`: the n_ctx positions before the final "."
    (at `eot_index - 1`); `"middle"`: the first n_ctx // 2 after the start tokens, the rest before the final ".".
    """
    batch, length = input_ids.shape
    pos = torch.arange(length, device=input_ids.device).expand(batch, length)
    if position == "end":
        slot = pos - start
        is_slot = (slot >= 0) & (slot < n_ctx)
    else:
        head = 0 if position == "front" else n_ctx // 2
        tail = pos - (eot_index.to(pos.device)[:, None] - 1 - (n_ctx - head))  # 0 at the first tail slot
        in_head, in_tail = (pos >= start) & (pos < start + head), (tail >= 0) & (tail < n_ctx - head)
        slot = torch.where(in_head, pos - start, head + tail)
        is_slot = in_head | in_tail
    return is_slot, slot.clamp(0, n_ctx - 1)


class ContextEmbedding(VLPromptLayer):
    """Token embedding whose output at placeholder positions is replaced by learned context vectors.

    The k-th context slot of each prompt (by position, see `context_slots`) gets context vector k, so the class name may
    sit at the end, in the middle or at the front, may contain any word, and the sequence length (hence EOT pooling)
    never changes. Class-specific context picks row
    `row_classes[b]` for prompt b (set by `text_rows_for_classes` while encoding chunks of classes); without it the
    prompts must be exactly the `n_classes` classes in order.

    Input: `input_ids` (B, L). Output: embeddings (B, L, d).
    """

    adapter_layer_names = ("coop_ctx",)
    other_param_names = ("coop_layout",)

    def __init__(self, base_layer: nn.Embedding, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.coop_ctx = nn.ParameterDict()
        self.coop_layout: dict[str, str] = {}  # adapter -> class_token_position
        self.eot_index = None  # the backbone's EOT locator (front/middle layouts count back from it)
        self.text_start = 1  # special tokens before the text (the backbone's, or the classifier's tokenizer's)
        self.row_classes: torch.Tensor | None = None

    def update_layer(self, adapter_name: str, config: CoOpConfig, backbone: Backbone, key: str) -> None:
        self.coop_ctx[adapter_name] = nn.Parameter(initial_context(config, self.base_layer))
        self.coop_layout[adapter_name] = config.class_token_position
        self.eot_index = backbone.eot_index
        self.text_start = backbone.text_start_tokens
        self.set_adapter(self.active_adapters)

    def context_rows(self, ctx: torch.Tensor, n_rows: int) -> torch.Tensor:
        """Class index of each prompt row for class-specific context."""
        if self.row_classes is not None:
            return self.row_classes.to(ctx.device)
        if n_rows != ctx.shape[0]:
            raise ValueError(
                f"class-specific context was trained for `n_classes`={ctx.shape[0]} classes but the text batch has "
                f"{n_rows} prompts; pass the prompts of all {ctx.shape[0]} classes in order, or use "
                "`PromptClassifier` (which tells the layer which class each row is)"
            )
        return torch.arange(n_rows, device=ctx.device)

    def placeholder_slots(self, name: str, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(is_slot, slot): where adapter `name`'s context slots are, and which context vector each one takes."""
        position = self.coop_layout[name]
        eot = None if position == "end" else self.eot_index(input_ids)
        return context_slots(input_ids, self.coop_ctx[name].shape[-2], position, eot, self.text_start)

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        embeds = self.base_layer(input_ids, *args, **kwargs)
        for name in self.enabled_adapters(self.coop_ctx):
            ctx = self.coop_ctx[name]
            is_slot, slot = self.placeholder_slots(name, input_ids)
            if ctx.dim() == 2:
                values = ctx[slot]
            else:
                rows = self.context_rows(ctx, input_ids.shape[0])
                values = ctx[rows[:, None], slot]
            # torch.where keeps static shapes (no graph break under torch.compile)
            embeds = torch.where(is_slot.unsqueeze(-1), values.to(embeds.dtype), embeds)
            break  # one context per prompt: the first active adapter owns the placeholders
        return embeds
