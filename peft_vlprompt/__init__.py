"""peft_vlprompt: prompt learning for CLIP as real PEFT methods.

Importing the package registers every method with peft, so `get_peft_model`, `PeftModel.from_pretrained`,
`PeftConfig.from_pretrained` and `AutoPeftModel.from_pretrained` work with our configs.
"""

from .backbones import ClipBackbone
from .classifier import PromptClassifier
from .tuners import CoOpConfig, CoOpModel, VLPromptConfig
from .tuners.cocoop import CoCoOpConfig, CoCoOpModel
from .tuners.dpl import DPLSearchConfig, DPLSearchModel
from .tuners.kgcoop import KgCoOpConfig, KgCoOpModel
from .tuners.prograd_coop import ProGradCoOpConfig, ProGradCoOpModel, make_prograd_optimizer

__version__ = "0.1.0"

__all__ = [
    "ClipBackbone",
    "CoCoOpConfig",
    "CoCoOpModel",
    "CoOpConfig",
    "CoOpModel",
    "DPLSearchConfig",
    "DPLSearchModel",
    "KgCoOpConfig",
    "KgCoOpModel",
    "PromptClassifier",
    "ProGradCoOpConfig",
    "ProGradCoOpModel",
    "VLPromptConfig",
    "make_prograd_optimizer",
]
