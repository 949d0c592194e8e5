"""Method objectives as plain functions returning a dict of named loss terms."""

from .kgcoop import kgcoop_loss
from .prograd import prograd_general_loss, teacher_logits
from .promptsrc import promptsrc_losses
from .restore import restore_feature_shift_loss, restore_losses, restore_prompt_norm_loss

__all__ = [
    "kgcoop_loss",
    "prograd_general_loss",
    "promptsrc_losses",
    "restore_feature_shift_loss",
    "restore_losses",
    "restore_prompt_norm_loss",
    "teacher_logits",
]
