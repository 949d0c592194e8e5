"""CoCoOp configuration (Zhou et al., "Conditional Prompt Learning for Vision-Language Models", CVPR 2022)."""

from dataclasses import dataclass, field

from ...backbones import Backbone
from ..coop.config import CoOpConfig


@dataclass
class CoCoOpConfig(CoOpConfig):
    """CoOp context plus a meta-net that shifts every context vector by a function of the image.

    For image x with L2-normalised feature f (size `projection_dim`), the meta-net
    `Linear(projection_dim, projection_dim // meta_net_reduction) -> ReLU -> Linear(., text_width)` gives pi(x), added to
    every context vector: the prompts of all classes for image x use `ctx + pi(x)`. Only `ctx` and the meta-net are
    trainable and saved. Defaults follow the paper's config (`vit_b16_c4_ep10_batch1_ctxv1`): `n_ctx=4` initialised
    from `"a photo of a"`, unified (not class-specific) context, class name at the end.

    Because the text features depend on the image, logits come from `PromptClassifier(model, ...)(pixel_values)`,
    which encodes the B x C image-class prompts in batched text-tower calls of at most `class_chunk_size` rows. Running
    the text tower without image conditioning (e.g. the plain `CLIPModel` forward `model(input_ids=..,
    pixel_values=..)` or `get_text_features`) raises a `ValueError` while the adapter is enabled: unconditioned CoCoOp
    prompts do not exist. `peft_vlprompt.tuners.cocoop.image_conditioning` sets the conditioning by hand; with the
    adapter disabled (`model.disable_adapter()`) the model is plain CLIP.

    Args:
        meta_net_reduction (`int`, defaults to `16`): hidden size of the meta-net is `projection_dim // meta_net_reduction`
            (512 -> 32 for ViT-B/16).

    Example:
        >>> model = get_peft_model(clip_model, CoCoOpConfig())
        >>> logits = PromptClassifier(model, tokenizer, classnames)(pixel_values)  # (B, C)
    """

    n_ctx: int | None = field(
        default=None,
        metadata={"help": "Number of context vectors: derived from `ctx_init` (4 for 'a photo of a'), else 16."},
    )
    ctx_init: str | None = field(
        default="a photo of a", metadata={"help": "Words initialising the context (CoCoOp: 'a photo of a')."}
    )
    meta_net_reduction: int = field(
        default=16, metadata={"help": "Meta-net hidden size is `projection_dim // meta_net_reduction`."}
    )

    method_name = "cocoop"
    image_conditioned = True  # class attribute: the classifier computes image features before the text pass

    def __post_init__(self):
        super().__post_init__()
        if self.class_specific:
            raise ValueError("`class_specific` must be False for CoCoOp (one context shared by all classes), got True")
        if isinstance(self.meta_net_reduction, bool) or not isinstance(self.meta_net_reduction, int):
            raise TypeError(f"`meta_net_reduction` must be an int, got {type(self.meta_net_reduction).__name__}")
        if self.meta_net_reduction < 1:
            raise ValueError(f"`meta_net_reduction` must be >= 1, got {self.meta_net_reduction}")

    def meta_net_hidden_size(self, backbone: Backbone) -> int:
        return backbone.projection_dim // self.meta_net_reduction

    def validate_for_backbone(self, backbone: Backbone) -> None:
        super().validate_for_backbone(backbone)
        if self.meta_net_hidden_size(backbone) < 1:
            raise ValueError(
                f"`meta_net_reduction`={self.meta_net_reduction} leaves no hidden unit for the model's "
                f"projection_dim={backbone.projection_dim}"
            )
