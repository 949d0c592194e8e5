"""CoCoOp's image-conditioned context: CoOp's context embedding plus a meta-net shift per image."""

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones import Backbone
from ..base import prompt_layers
from ..coop.layer import ContextEmbedding
from .config import CoCoOpConfig

_UNCONDITIONED = (
    "CoCoOp prompts depend on the image, but the text tower ran without image conditioning: get logits with "
    "`PromptClassifier(model, tokenizer, classnames)(pixel_values)`, or wrap the text call in "
    "`image_conditioning(model, image_features, row_images)`; `model.disable_adapter()` gives plain CLIP"
)


class ConditionalContextEmbedding(ContextEmbedding):
    """Token embedding whose placeholder outputs are `ctx[k] + meta_net(f_image)` for the image of each prompt row.

    The conditioning is set per text call by `image_conditioning`: `image_features` (B, projection_dim), L2-normalised,
    and `row_images` (N,), the image of each of the N prompt rows (None: one image shared by every row). One text
    batch can so hold the prompts of many images (B x C rows) and the meta-net runs once per image, not per row.

    Input: `input_ids` (N, L). Output: embeddings (N, L, text_width).
    """

    adapter_layer_names = ("coop_ctx", "cocoop_meta_fc1", "cocoop_meta_fc2")

    def __init__(self, base_layer: nn.Embedding, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        # one ModuleDict per Linear, keyed by adapter name, so saved keys do not carry the adapter name
        self.cocoop_meta_fc1 = nn.ModuleDict()
        self.cocoop_meta_fc2 = nn.ModuleDict()
        self.image_features: torch.Tensor | None = None
        self.row_images: torch.Tensor | None = None

    def update_layer(self, adapter_name: str, config: CoCoOpConfig, backbone: Backbone, key: str) -> None:
        super().update_layer(adapter_name, config, backbone, key)
        weight = self.base_layer.weight
        hidden = config.meta_net_hidden_size(backbone)
        factory = {"device": weight.device, "dtype": weight.dtype}
        self.cocoop_meta_fc1[adapter_name] = nn.Linear(backbone.projection_dim, hidden, **factory)
        self.cocoop_meta_fc2[adapter_name] = nn.Linear(hidden, backbone.text_width, **factory)
        self.set_adapter(self.active_adapters)

    def meta_shift(self, adapter_name: str, n_rows: int) -> torch.Tensor:
        """pi(x) of the image of each prompt row, shape (n_rows, text_width)."""
        if self.image_features is None:
            raise ValueError(_UNCONDITIONED)
        fc1, fc2 = self.cocoop_meta_fc1[adapter_name], self.cocoop_meta_fc2[adapter_name]
        features = self.image_features.to(device=fc1.weight.device, dtype=fc1.weight.dtype)
        if features.dim() != 2 or features.shape[1] != fc1.in_features:
            raise ValueError(
                f"`image_features` must be (n_images, {fc1.in_features}), got {tuple(self.image_features.shape)}"
            )
        shift = fc2(F.relu(fc1(features)))  # once per image
        if self.row_images is not None:
            return shift[self.row_images.to(shift.device)]
        if shift.shape[0] != 1:
            raise ValueError(
                f"{shift.shape[0]} images condition the text batch but `row_images` is not set: pass the image index "
                "of each prompt row to `image_conditioning`"
            )
        return shift.expand(n_rows, -1)

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        embeds = self.base_layer(input_ids, *args, **kwargs)
        for name in self.enabled_adapters(self.coop_ctx):
            is_slot, slot = self.placeholder_slots(name, input_ids)
            values = self.coop_ctx[name][slot]  # (N, L, d)
            if name in self.cocoop_meta_fc1:
                shift = self.meta_shift(name, input_ids.shape[0])
                values = values + shift[:, None, :].to(values.dtype)  # the same pi(x) for every context vector
            embeds = torch.where(is_slot.unsqueeze(-1), values.to(embeds.dtype), embeds)
            break  # one context per prompt: the first active adapter owns the placeholders
        return embeds


@contextlib.contextmanager
def image_conditioning(
    model: nn.Module, image_features: torch.Tensor | None, row_images: torch.Tensor | None = None
) -> Iterator[None]:
    """Condition the image-conditioned prompt layers of `model` for the text calls inside the block.

    Args:
        model: a `PeftModel` (or tuner / CLIP model) holding image-conditioned adapters.
        image_features: (B, projection_dim) image features; L2-normalised here (a no-op if they already are).
            `None` clears the conditioning.
        row_images: (N,) image index in [0, B) of each row of the next text batches; None when B == 1 (shared).

    Example:
        >>> with image_conditioning(model, image_feats, rows // n_classes):
        ...     text = model.get_text_features(input_ids=ids[rows % n_classes])
    """
    layers = [layer for layer in prompt_layers(model) if isinstance(layer, ConditionalContextEmbedding)]
    features = None if image_features is None else F.normalize(image_features, dim=-1)
    previous = [(layer.image_features, layer.row_images) for layer in layers]
    for layer in layers:
        layer.image_features, layer.row_images = features, row_images
    try:
        yield
    finally:
        for layer, (feats, rows) in zip(layers, previous):
            layer.image_features, layer.row_images = feats, rows
