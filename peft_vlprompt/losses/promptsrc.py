"""PromptSRC's self-regulating terms (Khattak et al., ICCV'23, https://arxiv.org/abs/2307.06948).

The prompted model is kept close to the frozen zero-shot model in text features, image features and logits. The
zero-shot side is detached everywhere.
"""

import torch
import torch.nn.functional as F


def promptsrc_losses(
    text_feat: torch.Tensor,
    zs_text_feat: torch.Tensor,
    image_feat: torch.Tensor,
    zs_image_feat: torch.Tensor,
    logits: torch.Tensor,
    zs_logits: torch.Tensor,
    text_weight: float = 25.0,
    image_weight: float = 10.0,
) -> dict[str, torch.Tensor]:
    """The three consistency terms added to the cross-entropy.

    - `src_text`: `text_weight * L1(norm(text_feat), norm(zs_text_feat))` (mean over all elements). In PromptSRC
      `zs_text_feat` is the mean of the frozen text features over the ensemble templates.
    - `src_image`: `image_weight * L1(norm(image_feat), norm(zs_image_feat))`, the image features of the prompted
      and of the frozen visual encoder.
    - `src_logits`: KL(p_zs || p) summed over the batch and classes, divided by `logits.numel()` (T = 1).

    Args:
        text_feat / zs_text_feat: `[n_classes, dim]`.
        image_feat / zs_image_feat: `[batch, dim]`.
        logits / zs_logits: `[batch, n_classes]`.
        text_weight / image_weight: PromptSRC's `TEXT_LOSS_WEIGHT` (25) and `IMAGE_LOSS_WEIGHT` (10).

    Returns:
        `{"src_text": ..., "src_image": ..., "src_logits": ...}`.
    """
    for name, value in (("text_weight", text_weight), ("image_weight", image_weight)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ValueError(f"`{name}` must be a number >= 0, got {value}")
    for name, a, b in (
        ("text_feat", text_feat, zs_text_feat),
        ("image_feat", image_feat, zs_image_feat),
        ("logits", logits, zs_logits),
    ):
        if a.shape != b.shape or a.dim() != 2:
            raise ValueError(
                f"`{name}` and `zs_{name}` must be 2-D of equal shape, got {tuple(a.shape)} and {tuple(b.shape)}"
            )
    src_text = F.l1_loss(
        F.normalize(text_feat.float(), dim=-1), F.normalize(zs_text_feat.detach().float(), dim=-1), reduction="mean"
    )
    src_image = F.l1_loss(
        F.normalize(image_feat.float(), dim=-1), F.normalize(zs_image_feat.detach().float(), dim=-1), reduction="mean"
    )
    src_logits = (
        F.kl_div(
            F.log_softmax(logits.float(), dim=-1),
            F.log_softmax(zs_logits.detach().float(), dim=-1),
            reduction="sum",
            log_target=True,
        )
        / logits.numel()
    )
    return {"src_text": src_text * text_weight, "src_image": src_image * image_weight, "src_logits": src_logits}
