"""`transformers.Siglip2Model` (SigLIP 2, NaFlex checkpoints): the SigLIP family's math on fixed-resolution images.

SigLIP 2's FixRes checkpoints are published as `SiglipModel` (family "siglip"); `Siglip2Model` is the NaFlex
architecture. Its text tower, encoder layers, post-norm, attention-pooling head and sigmoid logits are SigLIP's, module
path for module path, so this family subclasses `SiglipBackbone` and every prompt means what it means on SigLIP
(see `siglip.py`). What differs is the vision input:
- `Siglip2VisionEmbeddings` embeds already patchified pixels (B, N, 3 * P * P) by a linear layer and resizes its
  position grid to each image's `spatial_shapes`. `vision_inputs` turns the package's (B, 3, H, W) images into exactly
  what `Siglip2ImageProcessor` makes of a fixed-size image: row-major patches, each flattened (row, column, channel),
  and `spatial_shapes` = (H / P, W / P).
- `pixel_attention_mask` is passed as None, not all ones. Every patch of a fixed-size image is valid, and with None
  `Siglip2VisionModel` builds no encoder mask (`create_bidirectional_mask` returns None) and the pooling head attends
  over every token: what an all-ones mask means, exactly. A 4-D mask built for N patches would not fit the N + n
  sequences of appended vision prompts (IVLP, VPT, MaPLe, PromptSRC, RESTORE; dropped before the head as on SigLIP).
- Images are fixed-size squares: `fixed_image_processor` (used by `load_backbone`) replaces the NaFlex processor by
  a `SiglipImageProcessor` resizing to side x side, side = P * floor(sqrt(max_num_patches)), with the processor's own
  resample, rescale and normalisation: what `Siglip2ImageProcessor` makes of a square image (a non-square one is
  squashed to the square instead of keeping its aspect ratio). Variable resolution and padded NaFlex batches are not
  supported: `vision_inputs` refuses anything but (B, 3, H, W) images with sides divisible by P.
"""

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from .base import register
from .siglip import SiglipBackbone

logger = logging.getLogger(__name__)


@register
@dataclass(frozen=True)
class Siglip2Backbone(SiglipBackbone):
    """Sizes and module names of a `transformers.Siglip2Model` (fields: see `Backbone`; `patch_size`: P)."""

    patch_size: int = 0
    num_channels: int = 3

    family = "siglip2"
    model_type = ("siglip2",)

    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        from transformers import Siglip2Model

        return isinstance(model, Siglip2Model)

    display_name = "SigLIP 2"

    @classmethod
    def fields_from_configs(cls, text, vision) -> dict:
        return {**super().fields_from_configs(text, vision), "patch_size": vision.patch_size,
                "num_channels": vision.num_channels}  # fmt: skip

    @classmethod
    def image_tokens(cls, vision) -> int:
        return vision.num_patches  # the position grid's patches (no CLS token)

    def vision_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor | None]:
        """NaFlex inputs of fixed-size images: `Siglip2ImageProcessor`'s patches, their grid, no mask (all valid)."""
        p, c, shape = self.patch_size, self.num_channels, tuple(pixel_values.shape)
        if len(shape) != 4 or shape[1] != c or shape[2] % p or shape[3] % p:
            raise ValueError(
                f"SigLIP 2 is supported on fixed-resolution images only: `pixel_values` must be (B, {c}, H, W) with H "
                f"and W multiples of the patch size {p}, got shape {shape} (patchified NaFlex "
                "inputs and variable resolutions are not supported: use the image processor of `load_backbone`)"
            )
        b, _, h, w = pixel_values.shape
        patches = pixel_values.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1).reshape(b, -1, p * p * c)
        shapes = torch.tensor([[h // p, w // p]], dtype=torch.long, device=pixel_values.device).expand(b, 2)
        return {"pixel_values": patches, "pixel_attention_mask": None, "spatial_shapes": shapes}

    @classmethod
    def load_tokenizer(cls, path: str):
        """The checkpoint's tokenizer, padding on the right: `Siglip2Tokenizer` defaults to left padding, which would
        move the prompt text (and its context slots) behind the padding; SigLIP 2 pads text to `max_length` after it
        (pads follow `</s>`, as in SigLIP and `SiglipTextModel`'s last-position pooling expects)."""
        tokenizer = super().load_tokenizer(path)
        if getattr(tokenizer, "padding_side", "right") != "right":
            logger.warning("SigLIP 2: the tokenizer of %s pads on the %s; prompts are padded on the right instead",
                           path, tokenizer.padding_side)  # fmt: skip
            tokenizer.padding_side = "right"
        return tokenizer

    @classmethod
    def fixed_image_processor(cls, image_processor):
        """A `SiglipImageProcessor` giving the square images `Siglip2ImageProcessor` makes of a square image."""
        patch = getattr(image_processor, "patch_size", None)
        max_patches = getattr(image_processor, "max_num_patches", None)
        if patch is None or max_patches is None:
            return image_processor  # already a fixed-size processor (its `size` is used as is)
        from transformers import SiglipImageProcessor

        side = patch * math.isqrt(max_patches)
        logger.info("SigLIP 2: images are resized to %d x %d (patch %d, max_num_patches %d)", side, side, patch,
                    max_patches)  # fmt: skip
        keys = ("resample", "do_rescale", "rescale_factor", "do_normalize", "image_mean", "image_std",
                "do_convert_rgb")  # fmt: skip
        kwargs = {k: getattr(image_processor, k) for k in keys if getattr(image_processor, k, None) is not None}
        return SiglipImageProcessor(do_resize=True, size={"height": side, "width": side}, **kwargs)
