from ..._peft_compat import register_method
from .config import DeepPromptConfig, LayerSpec, PromptSRCConfig
from .layer import (
    DeepPromptLayer,
    DeepTextLayer,
    DeepVisionLayer,
    TextContextEmbedding,
    VisionHeadInput,
    VisionPromptEmbeddings,
)
from .model import DeepPromptModel, PromptSRCModel, deep_prompt_wrapper
from .prefix import PrefixAttention, prefix_attention
from .presets import deep_language_preset, ivlp_preset, maple_preset, promptsrc_preset, vpt_deep_preset

register_method(name="deep_prompt", config_cls=DeepPromptConfig, model_cls=DeepPromptModel)
register_method(name="promptsrc", config_cls=PromptSRCConfig, model_cls=PromptSRCModel)

__all__ = [
    "DeepPromptConfig",
    "DeepPromptLayer",
    "DeepPromptModel",
    "DeepTextLayer",
    "DeepVisionLayer",
    "LayerSpec",
    "PrefixAttention",
    "PromptSRCConfig",
    "PromptSRCModel",
    "TextContextEmbedding",
    "VisionHeadInput",
    "VisionPromptEmbeddings",
    "deep_language_preset",
    "deep_prompt_wrapper",
    "ivlp_preset",
    "maple_preset",
    "prefix_attention",
    "promptsrc_preset",
    "vpt_deep_preset",
]
