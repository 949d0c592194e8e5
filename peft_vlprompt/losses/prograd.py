"""ProGrad's general-knowledge objective: soft cross-entropy to the zero-shot CLIP teacher (Zhu et al., ICCV'23).

Its gradient is the "general direction" G_g that `peft_vlprompt.optim.ProGrad` projects the task gradient against;
the loss itself is not added to the task loss.
"""

import torch
import torch.nn.functional as F


def teacher_logits(
    image_features: torch.Tensor, zs_text_features: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Zero-shot teacher logits `logit_scale.exp() * norm(image_features) @ norm(zs_text_features).T`, detached.

    Args:
        image_features: `[batch, dim]` image embeddings (after the visual projection).
        zs_text_features: `[n_classes, dim]` zero-shot text embeddings of the hand-crafted prompts, computed once
            and cached (they do not depend on the learned prompts).
        logit_scale: CLIP's `logit_scale` as stored in `CLIPModel.logit_scale`, i.e. the *log* of the scale; it is
            exponentiated here.

    Both feature sets are L2-normalised here (a no-op if they already are).
    """
    if image_features.dim() != 2 or zs_text_features.dim() != 2:
        raise ValueError(
            "`image_features` and `zs_text_features` must be 2-D, got shapes "
            f"{tuple(image_features.shape)} and {tuple(zs_text_features.shape)}"
        )
    if image_features.shape[-1] != zs_text_features.shape[-1]:
        raise ValueError(
            f"feature sizes differ: `image_features` {image_features.shape[-1]} vs `zs_text_features` "
            f"{zs_text_features.shape[-1]}"
        )
    with torch.no_grad():
        scale = torch.as_tensor(logit_scale, device=image_features.device).float().exp()
        image = F.normalize(image_features.float(), dim=-1)
        text = F.normalize(zs_text_features.float().to(image.device), dim=-1)
        return scale * image @ text.T


def prograd_general_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0
) -> dict[str, torch.Tensor]:
    """T²-scaled soft cross-entropy to the teacher: `mean_b sum_c -softmax(t/T) * log_softmax(s/T) * T**2`.

    It differs from KL(teacher || student) only by the teacher's entropy, a constant, so the gradient is the same.
    The teacher is detached. Computed in float32.

    Returns:
        `{"prograd_kl": loss}`.
    """
    if not (isinstance(T, (int, float)) and not isinstance(T, bool) and T > 0):
        raise ValueError(f"`T` must be a number > 0, got {T}")
    if student_logits.shape != teacher_logits.shape or student_logits.dim() != 2:
        raise ValueError(
            "`student_logits` and `teacher_logits` must both be [batch, n_classes], got "
            f"{tuple(student_logits.shape)} and {tuple(teacher_logits.shape)}"
        )
    target = F.softmax(teacher_logits.detach().float() / T, dim=-1)
    log_probs = F.log_softmax(student_logits.float() / T, dim=-1)
    loss = -(target * log_probs).sum(dim=-1).mean() * (T * T)
    return {"prograd_kl": loss}
