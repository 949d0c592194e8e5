"""peft_vlprompt: prompt learning for CLIP as real PEFT methods.

Importing the package registers every method with peft, so `get_peft_model`, `PeftModel.from_pretrained`,
`PeftConfig.from_pretrained` and `AutoPeftModel.from_pretrained` work with our configs.
"""

from . import losses
from .backbones import Backbone, ClipBackbone, backbone_for, load_backbone
from .classifier import PromptClassifier
from .diagnostics import feature_shift
from .metric_modules import metrics_module_path  # a path only: `evaluate` is not imported
from .optim import GaussianPromptAggregator, ProGrad
from .tuners import CoOpConfig, CoOpModel, VLPromptConfig
from .tuners.cocoop import CoCoOpConfig, CoCoOpModel
from .tuners.deep_prompt import (
    DeepPromptConfig,
    DeepPromptModel,
    PromptSRCConfig,
    PromptSRCModel,
    deep_language_preset,
    ivlp_preset,
    maple_preset,
    promptsrc_preset,
    vpt_deep_preset,
)
from .tuners.dpl import DPLSearchConfig, DPLSearchModel
from .tuners.kgcoop import KgCoOpConfig, KgCoOpModel
from .tuners.prograd_coop import ProGradCoOpConfig, ProGradCoOpModel, make_prograd_optimizer
from .tuners.restore import RestoreAdapterConfig, RestoreModel, restore_preset, update_restore_ratios

__version__ = "0.1.0"

__all__ = [
    "Backbone",
    "ClipBackbone",
    "CoCoOpConfig",
    "CoCoOpModel",
    "CoOpConfig",
    "CoOpModel",
    "DPLSearchConfig",
    "DPLSearchModel",
    "DeepPromptConfig",
    "DeepPromptModel",
    "GaussianPromptAggregator",
    "KgCoOpConfig",
    "KgCoOpModel",
    "ProGrad",
    "PromptClassifier",
    "ProGradCoOpConfig",
    "ProGradCoOpModel",
    "PromptSRCConfig",
    "PromptSRCModel",
    "RestoreAdapterConfig",
    "RestoreModel",
    "VLPromptConfig",
    "backbone_for",
    "deep_language_preset",
    "feature_shift",
    "losses",
    "ivlp_preset",
    "load_backbone",
    "make_prograd_optimizer",
    "maple_preset",
    "metrics_module_path",
    "promptsrc_preset",
    "restore_preset",
    "update_restore_ratios",
    "vpt_deep_preset",
]
