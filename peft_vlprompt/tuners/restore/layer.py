"""RESTORE's surgery adapter on a projection: `f + r · FFN(LN(f))`, with r and RESTORE's bookkeeping as buffers."""

import torch
from peft.tuners._buffer_dict import BufferDict
from torch import nn

from ...backbones import Backbone
from ..base import VLPromptLayer
from .config import RestoreAdapterConfig


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


class SurgeryAdapter(VLPromptLayer):
    """Wraps `text_projection` or `visual_projection` (output (N, D); on SigLIP the vision one is the pooling head).

    Per adapter: `restore_norm` (LayerNorm(D)), `restore_fc1` (D -> m·D), `restore_fc2` (m·D -> D) are trained;
    the persistent buffers `restore_ratio` (r), `restore_updated` (1 once the ratio update ran) and
    `restore_init_norms` (‖P⁰ᵀP⁰‖_F of this tower's deep prompts at creation, one per deep layer) are saved with the
    adapter.
    """

    adapter_layer_names = ("restore_norm", "restore_fc1", "restore_fc2")
    other_param_names = ("restore_ratio", "restore_updated", "restore_init_norms", "restore_tower")

    def __init__(self, base_layer: nn.Linear, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.restore_norm = nn.ModuleDict()
        self.restore_fc1 = nn.ModuleDict()
        self.restore_fc2 = nn.ModuleDict()
        self.restore_ratio = BufferDict(persistent=True)
        self.restore_updated = BufferDict(persistent=True)
        self.restore_init_norms = BufferDict(persistent=True)
        self.restore_tower: dict[str, str] = {}

    def update_layer(self, adapter_name: str, config: RestoreAdapterConfig, backbone: Backbone, key: str) -> None:
        weight = self._reference_weight()  # a pooling head (the vision "projection" of some families) has no .weight
        dim, hidden = backbone.projection_dim, backbone.projection_dim * config.adapter_hidden_mult
        factory = dict(device=weight.device, dtype=torch.float32)
        self.restore_norm[adapter_name] = nn.LayerNorm(dim, **factory).to(weight.dtype)
        self.restore_fc1[adapter_name] = nn.Linear(dim, hidden, **factory).to(weight.dtype)
        self.restore_fc2[adapter_name] = nn.Linear(hidden, dim, **factory).to(weight.dtype)
        tower = backbone.tower_of(key)
        ratio = config.text_ratio if tower == "text" else config.vision_ratio
        self.restore_tower[adapter_name] = tower
        self.restore_ratio[adapter_name] = torch.tensor(float(ratio), device=weight.device)
        self.restore_updated[adapter_name] = torch.tensor(False, device=weight.device)
        self.restore_init_norms[adapter_name] = torch.ones(len(config.deep_layers), device=weight.device)
        self.set_adapter(self.active_adapters)

    def surgery(self, features: torch.Tensor, adapter_name: str) -> torch.Tensor:
        """`f + r · fc2(QuickGELU(fc1(LN(f))))` in the adapter's dtype, returned in the features' dtype."""
        fc1, fc2 = self.restore_fc1[adapter_name], self.restore_fc2[adapter_name]
        x = self.restore_norm[adapter_name](features.to(fc1.weight.dtype))
        delta = fc2(quick_gelu(fc1(x))).to(features.dtype)
        return features + self.restore_ratio[adapter_name].to(features.dtype) * delta

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        features = self.base_layer(x, *args, **kwargs)
        for name in self.enabled_adapters(self.restore_fc1):
            return self.surgery(features, name)  # one surgery per tower: the first active adapter's
        return features
