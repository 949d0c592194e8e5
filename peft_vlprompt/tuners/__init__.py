"""One folder per method; importing a folder registers its method with peft."""

from .base import VLPromptConfig, VLPromptLayer, VLPromptTuner, enabled_configs, text_rows_for_classes
from .coop import CoOpConfig, CoOpModel

__all__ = [
    "CoOpConfig",
    "CoOpModel",
    "VLPromptConfig",
    "VLPromptLayer",
    "VLPromptTuner",
    "enabled_configs",
    "text_rows_for_classes",
]
