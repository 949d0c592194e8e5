"""One folder per method; importing a folder registers its method with peft."""

from .base import VLPromptConfig, VLPromptLayer, VLPromptTuner, enabled_configs, text_rows_for_classes
from .cocoop import CoCoOpConfig, CoCoOpModel
from .coop import CoOpConfig, CoOpModel
from .deep_prompt import DeepPromptConfig, DeepPromptModel, PromptSRCConfig, PromptSRCModel
from .dpl import DPLSearchConfig, DPLSearchModel
from .kgcoop import KgCoOpConfig, KgCoOpModel
from .prograd_coop import ProGradCoOpConfig, ProGradCoOpModel
from .restore import RestoreAdapterConfig, RestoreModel

__all__ = [
    "CoCoOpConfig",
    "CoCoOpModel",
    "CoOpConfig",
    "CoOpModel",
    "DeepPromptConfig",
    "DeepPromptModel",
    "DPLSearchConfig",
    "DPLSearchModel",
    "KgCoOpConfig",
    "KgCoOpModel",
    "ProGradCoOpConfig",
    "ProGradCoOpModel",
    "PromptSRCConfig",
    "PromptSRCModel",
    "RestoreAdapterConfig",
    "RestoreModel",
    "VLPromptConfig",
    "VLPromptLayer",
    "VLPromptTuner",
    "enabled_configs",
    "text_rows_for_classes",
]
