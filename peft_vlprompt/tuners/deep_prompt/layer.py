"""Deep-prompt wrappers for replace mode (IVLP / VPT-deep / MaPLe) and their shared prompt storage.

Every wrapper owns, per adapter, either its prompts (`deep_prompt`, shape (n, width)) or, when MaPLe-coupled, the
linear map from the text prompts of the same index (`deep_proj`); the text-side wrapper is reached through a plain
dict (`deep_source`, set by the tuner after injection) so it is not registered twice in the state dict.
"""

import torch
from torch import nn

from ...backbones import Backbone
from ..base import VLPromptLayer
from .config import DeepPromptConfig, LayerSpec


def initial_prompts(config: DeepPromptConfig, spec: LayerSpec, base_layer: nn.Module) -> torch.Tensor:
    """(n, width) initial prompts: N(0, init_std), or the `ctx_init` token embeddings for the text input context."""
    weight = next(base_layer.parameters())
    if spec.tower == "text" and spec.kind == "embedding" and config.ctx_init_token_ids:
        ids = torch.tensor(config.ctx_init_token_ids[: spec.length], device=weight.device)
        return base_layer.weight.detach()[ids].clone()
    prompts = torch.empty(spec.length, spec.width, device=weight.device, dtype=torch.float32)
    nn.init.normal_(prompts, std=config.init_std)
    return prompts.to(weight.dtype)


def replace_slots(hidden: torch.Tensor, prompts: torch.Tensor, start: int = 1) -> torch.Tensor:
    """Positions start..start+n-1 (right after the tokenizer's start tokens: CLIP's BOS, none for SigLIP) of `hidden`
    (B, L, d) become `prompts` (n, d); static shapes."""
    n = prompts.shape[0]
    prompts = prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :start], prompts, hidden[:, start + n :]], dim=1)


def append_prompts(hidden: torch.Tensor, prompts: torch.Tensor, drop: int = 0) -> torch.Tensor:
    """Drop the last `drop` tokens of `hidden` (B, L, d) and append `prompts` (n, d)."""
    keep = hidden.shape[1] - drop
    prompts = prompts.to(hidden.dtype).unsqueeze(0).expand(hidden.shape[0], -1, -1)
    return torch.cat([hidden[:, :keep], prompts], dim=1)


class DeepPromptLayer(VLPromptLayer):
    """Base of the deep-prompt wrappers: per-adapter prompts or coupling projection, and the prompt lookup."""

    adapter_layer_names = ("deep_prompt", "deep_proj")
    other_param_names = ("deep_spec", "deep_source")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.deep_prompt = nn.ParameterDict()
        self.deep_proj = nn.ModuleDict()
        self.deep_spec: dict[str, LayerSpec] = {}
        self.deep_source: dict[str, DeepPromptLayer] = {}  # coupling: text-side wrapper of the same index
        self.text_start = 1  # text slots start after these special tokens (see `replace_slots`)

    def update_layer(self, adapter_name: str, config: DeepPromptConfig, backbone: Backbone, key: str) -> None:
        spec = config.layer_specs(backbone)[key]
        self.check_spec(spec, key)
        if spec.coupled:
            weight = next(self.base_layer.parameters())
            proj = nn.Linear(backbone.text_width, spec.width, device=weight.device, dtype=torch.float32)
            self.deep_proj[adapter_name] = proj.to(weight.dtype)
        else:
            self.deep_prompt[adapter_name] = nn.Parameter(initial_prompts(config, spec, self.base_layer))
        self.deep_spec[adapter_name] = spec
        self.text_start = backbone.text_start_tokens
        self.set_adapter(self.active_adapters)

    def check_spec(self, spec: LayerSpec, key: str) -> None:
        """Raise if this wrapper cannot serve `spec` (overridden by wrappers with requirements)."""

    def prompt_adapter(self) -> str | None:
        """The adapter whose prompts this layer uses now: the first active one it holds (None when disabled)."""
        if self.disable_adapters:
            return None
        for name in self.active_adapters:
            if name in self.deep_spec:
                return name
        return None

    def prompts(self, adapter_name: str) -> torch.Tensor:
        """The (n, width) prompts of `adapter_name`, in the storage dtype (callers cast to the hidden dtype)."""
        if adapter_name in self.deep_proj:
            source = self.deep_source.get(adapter_name)
            if source is None:
                raise RuntimeError(
                    f"coupled prompts of adapter {adapter_name!r} have no linked text prompts; create the adapter "
                    "with `get_peft_model` / `PeftModel.from_pretrained` so the tuner links them"
                )
            proj = self.deep_proj[adapter_name]
            return proj(source.prompts(adapter_name).to(proj.weight.dtype))
        return self.deep_prompt[adapter_name]


class TextContextEmbedding(DeepPromptLayer):
    """Text input context (index 0): token embeddings of the n_0 slots after the start tokens are replaced before positions are added.

    Wraps `text_model.embeddings.token_embedding`. Input `input_ids` (B, L); output embeddings (B, L, d).
    """

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        embeds = self.base_layer(input_ids, *args, **kwargs)
        name = self.prompt_adapter()
        if name is None:
            return embeds
        return replace_slots(embeds, self.prompts(name), self.text_start)


class VisionPromptEmbeddings(DeepPromptLayer):
    """Vision input prompts (index 0) appended after CLS+patch embeddings, so they pass `pre_layrnorm` (MaPLe).

    Wraps `vision_model.embeddings`. Output (B, 1 + patches + n_0, d).
    """

    def forward(self, pixel_values: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        embeds = self.base_layer(pixel_values, *args, **kwargs)
        name = self.prompt_adapter()
        if name is None:
            return embeds
        return append_prompts(embeds, self.prompts(name))


class DeepTextLayer(DeepPromptLayer):
    """Text encoder layer i >= 1: the n_i slots after the start tokens of the incoming hidden states are replaced, then the layer runs."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self.prompt_adapter()
        if name is not None:
            hidden_states = replace_slots(hidden_states, self.prompts(name), self.text_start)
        return self.base_layer(hidden_states, *args, **kwargs)


class DeepVisionLayer(DeepPromptLayer):
    """Vision encoder layer i >= 1: carried prompt outputs are dropped, this layer's prompts appended, then it runs."""

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self.prompt_adapter()
        if name is not None:
            hidden_states = append_prompts(hidden_states, self.prompts(name), drop=self.deep_spec[name].carried)
        return self.base_layer(hidden_states, *args, **kwargs)


class VisionHeadInput(DeepPromptLayer):
    """The module before an attention-pooling head (`Backbone.vision_head_input`, e.g. SigLIP's post-norm): the prompt
    tokens still appended after the last encoder layer (`carried`) are dropped from its input, so it and the head
    see exactly the image tokens, as in the base model. Holds no prompts."""

    def update_layer(self, adapter_name: str, config: DeepPromptConfig, backbone: Backbone, key: str) -> None:
        self.deep_spec[adapter_name] = config.layer_specs(backbone)[key]
        self.set_adapter(self.active_adapters)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self.prompt_adapter()
        if name is not None:
            hidden_states = hidden_states[:, : hidden_states.shape[1] - self.deep_spec[name].carried]
        return self.base_layer(hidden_states, *args, **kwargs)
