"""DPL supernet tuner, and helpers to read the search state (alpha, prompts, chosen lengths) off a model."""

import torch
from torch import nn

from ...backbones import backbone_for
from ..base import VLPromptTuner
from .config import TOWERS
from .layer import SupernetAttention


class DPLSearchModel(VLPromptTuner):
    """Creates the DPL supernet from a `DPLSearchConfig` (see there): every searched attention module is wrapped by
    `SupernetAttention`. Trainable and saved: the architecture logits `dpl_alpha` and the candidate prompts
    `dpl_prompts`."""

    prefix = "dpl_"

    def wrapper_for(self, config, key):
        return SupernetAttention

    def _check_target_module_exists(self, peft_config, key: str) -> bool:
        # peft shrinks a list of >= 20 targets to minimal suffixes before matching (here {"self_attn"}: 24 layers of
        # ViT-B/16), so match against the full list resolved from the backbone instead of `target_modules`
        return key in set(peft_config.target_module_names(self._backbone))

    def _link_layers(self, model: nn.Module, adapter_name: str) -> None:
        for layer in supernet_layers(model):
            layer.set_norm(model.get_submodule(self._backbone.attention_norm(layer.target_key)))


def supernet_layers(model: nn.Module, tower: str | None = None) -> list[SupernetAttention]:
    """The supernet layers of `model` (a PeftModel, tuner or CLIPModel), text before vision, by layer index."""
    layers = [m for m in model.modules() if isinstance(m, SupernetAttention) and tower in (None, m.tower)]
    return sorted(layers, key=lambda m: (TOWERS.index(m.tower), m.layer_index))


def _layers_with(model: nn.Module, adapter_name: str, tower: str | None = None) -> list[SupernetAttention]:
    layers = [layer for layer in supernet_layers(model, tower) if adapter_name in layer.dpl_alpha]
    if not layers and tower is None:
        raise ValueError(f"the model has no DPL supernet adapter named {adapter_name!r}")
    return layers


def alpha_parameters(model: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    """The architecture logits (one (C,) row per searched layer), updated on validation batches."""
    return [layer.dpl_alpha[adapter_name] for layer in _layers_with(model, adapter_name)]


def prompt_parameters(model: nn.Module, adapter_name: str = "default") -> list[nn.Parameter]:
    """Every candidate prompt tensor (one per searched layer), updated on training batches."""
    return [layer.dpl_prompts[adapter_name] for layer in _layers_with(model, adapter_name)]


def alpha_logits(model: nn.Module, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """Architecture logits per searched tower, shape (layers, candidates), detached."""
    out = {}
    for tower in TOWERS:
        layers = _layers_with(model, adapter_name, tower)
        if layers:
            out[tower] = torch.stack([layer.dpl_alpha[adapter_name].detach() for layer in layers])
    return out


def candidate_lengths(model: nn.Module, adapter_name: str = "default") -> dict[str, list[int]]:
    """The candidate prompt lengths of each searched tower."""
    out = {}
    for tower in TOWERS:
        layers = _layers_with(model, adapter_name, tower)
        if layers:
            out[tower] = list(layers[0].dpl_candidates[adapter_name])
    return out


def chosen_lengths(model: nn.Module, adapter_name: str = "default") -> dict[str, list[int]]:
    """Per-layer argmax of alpha, as prompt lengths, for both towers (all zeros for a tower that is not searched).

    Ties go to the first (shortest) candidate, as `torch.argmax` does.
    """
    backbone = backbone_for(model)
    out = {"text": [0] * backbone.text_layers, "vision": [0] * backbone.vision_layers}
    for tower in TOWERS:
        for layer in _layers_with(model, adapter_name, tower):
            row = layer.dpl_alpha[adapter_name].detach()
            out[tower][layer.layer_index] = layer.dpl_candidates[adapter_name][int(row.argmax())]
    return out


def chosen_prompts(model: nn.Module, adapter_name: str = "default") -> dict[str, list[torch.Tensor | None]]:
    """The searched prompts of each layer's chosen candidate (None where the choice is 0), detached copies."""
    lengths = chosen_lengths(model, adapter_name)
    out: dict[str, list[torch.Tensor | None]] = {tower: [None] * len(n) for tower, n in lengths.items()}
    for tower in TOWERS:
        for layer in _layers_with(model, adapter_name, tower):
            n = lengths[tower][layer.layer_index]
            if n:
                out[tower][layer.layer_index] = layer.candidate_prompts(adapter_name, n).detach().clone()
    return out


def set_mixing(model: nn.Module, mixing: str, adapter_name: str = "default") -> None:
    """Switch how the supernet layers combine candidates at run time (`"efficient"` or `"naive"`; same output)."""
    from .config import MIXINGS

    if mixing not in MIXINGS:
        raise ValueError(f"`mixing` must be one of {MIXINGS}, got {mixing!r}")
    for layer in _layers_with(model, adapter_name):
        layer.dpl_mixing[adapter_name] = mixing
    config = getattr(model, "peft_config", {}).get(adapter_name)
    if config is not None:
        config.mixing = mixing
