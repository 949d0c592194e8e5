"""KgCoOp's knowledge-guided term (Yao et al., CVPR'23, https://arxiv.org/abs/2303.13283)."""

import torch
import torch.nn.functional as F


def kgcoop_loss(
    text_features: torch.Tensor, clip_text_features: torch.Tensor, weight: float = 8.0
) -> dict[str, torch.Tensor]:
    """`weight * (1 - mean_i cos(t_i, t_i^clip))` between learned and frozen hand-crafted class text features.

    The paper writes it as ||w - w_clip||², which for unit vectors is 2 * (1 - cos); the released code uses the
    cosine form (weight 8.0 for base-to-new). The frozen features are detached.

    Args:
        text_features: `[n_classes, dim]` text features from the learned prompts.
        clip_text_features: `[n_classes, dim]` frozen zero-shot text features, same class order.
        weight: the term's weight (KgCoOp's `W`).

    Returns:
        `{"kgcoop": loss}`.
    """
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
        raise ValueError(f"`weight` must be a number >= 0, got {weight}")
    if text_features.shape != clip_text_features.shape or text_features.dim() != 2:
        raise ValueError(
            "`text_features` and `clip_text_features` must both be [n_classes, dim], got "
            f"{tuple(text_features.shape)} and {tuple(clip_text_features.shape)}"
        )
    cos = F.cosine_similarity(text_features.float(), clip_text_features.detach().float(), dim=-1)
    return {"kgcoop": weight * (1.0 - cos.mean())}
