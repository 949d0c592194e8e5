"""Deep-prompt tuners: pick the wrapper per target and link coupled / prefix layers after injection."""

from torch import nn

from ...backbones import Backbone, family_of, unwrap_model
from ..base import VLPromptLayer, VLPromptTuner
from .config import DeepPromptConfig
from .layer import (
    DeepPromptLayer,
    DeepTextLayer,
    DeepVisionLayer,
    TextContextEmbedding,
    VisionHeadInput,
    VisionPromptEmbeddings,
)
from .prefix import PrefixAttention

WRAPPERS: dict[tuple[str, str], type[DeepPromptLayer]] = {
    ("embedding", "text"): TextContextEmbedding,
    ("embedding", "vision"): VisionPromptEmbeddings,
    ("layer", "text"): DeepTextLayer,
    ("layer", "vision"): DeepVisionLayer,
    ("drop", "vision"): VisionHeadInput,  # attention-pooling families: appended prompts dropped before the head
    ("attention", "text"): PrefixAttention,
    ("attention", "vision"): PrefixAttention,
}


def link_deep_prompts(model: nn.Module, config: DeepPromptConfig, adapter_name: str, backbone: Backbone) -> None:
    """Give coupled vision wrappers their text-side source and prefix wrappers their layer's LN1 (plain references)."""
    for path, spec in config.layer_specs(backbone).items():
        wrapper = model.get_submodule(path)
        if spec.coupled:
            wrapper.deep_source[adapter_name] = model.get_submodule(config.module_path("text", spec.index, backbone))
        if isinstance(wrapper, PrefixAttention):
            wrapper.set_norm(model.get_submodule(backbone.attention_norm(path)))


def deep_prompt_wrapper(model: nn.Module, config: DeepPromptConfig, tower: str, index: int) -> DeepPromptLayer:
    """The wrapper holding the prompts of `tower` at `index` in `model` (a `PeftModel`, tuner or `CLIPModel`)."""
    return unwrap_model(model).get_submodule(config.module_path(tower, index, family_of(model)))


class DeepPromptModel(VLPromptTuner):
    """Creates deep prompts from a `DeepPromptConfig` (see there). Only prompts and coupling maps are trainable."""

    prefix = "deep_"

    def wrapper_for(self, config: DeepPromptConfig, key: str) -> type[VLPromptLayer]:
        if config.text_input == "ensemble" and key == self._backbone.token_embedding:
            from ..dpl.ensemble import EnsembleTextEmbedding

            return EnsembleTextEmbedding
        spec = config.layer_specs(self._backbone)[key]
        return WRAPPERS[spec.kind, spec.tower]

    def _link_layers(self, model: nn.Module, adapter_name: str) -> None:
        link_deep_prompts(model, self.peft_config[adapter_name], adapter_name, self._backbone)


class PromptSRCModel(DeepPromptModel):
    """PromptSRC's prompts are IVLP deep prompts; the method differs in its losses and GPA (see `PromptSRCConfig`)."""

    prefix = "promptsrc_"
