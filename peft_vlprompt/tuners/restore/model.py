"""RESTORE tuner, its prompt-pair lookup and the one-time dynamic ratio update."""

import logging

import torch
from torch import nn

from ...backbones import family_of, unwrap_model
from ..base import VLPromptLayer
from ..deep_prompt.model import DeepPromptModel
from .config import RestoreAdapterConfig
from .layer import SurgeryAdapter

logger = logging.getLogger(__name__)


def gram_norm(prompts: torch.Tensor) -> torch.Tensor:
    """‖PᵀP‖_F of (n, d) prompts, computed as ‖PPᵀ‖_F (same non-zero singular values, an n x n product)."""
    prompts = prompts.float()
    return torch.linalg.matrix_norm(prompts @ prompts.T)


def prompt_pairs(clip: nn.Module, config: RestoreAdapterConfig, adapter_name: str) -> list[tuple[torch.Tensor, ...]]:
    """(P_t, P_v) of every deep layer, P_v being the coupled projection of P_t (with gradients)."""
    pairs, family = [], family_of(clip)
    for index in config.deep_layers:
        text = clip.get_submodule(config.module_path("text", index, family))
        vision = clip.get_submodule(config.module_path("vision", index, family))
        pairs.append((text.prompts(adapter_name), vision.prompts(adapter_name)))
    return pairs


def restore_adapter(model: nn.Module, adapter_name: str | None = None) -> tuple[str, RestoreAdapterConfig]:
    """(name, config) of the RESTORE adapter of a `PeftModel` (or its tuner): `adapter_name` or the first active."""
    configs = getattr(model, "peft_config", None) or {}
    if adapter_name is None:
        active = getattr(model, "active_adapters", None) or []
        active = [active] if isinstance(active, str) else list(active)
        candidates = [n for n in active if isinstance(configs.get(n), RestoreAdapterConfig)]
        candidates += [n for n, c in configs.items() if isinstance(c, RestoreAdapterConfig)]
        if not candidates:
            raise ValueError(f"{type(model).__name__} has no RESTORE adapter (`RestoreAdapterConfig`)")
        adapter_name = candidates[0]
    config = configs.get(adapter_name)
    if not isinstance(config, RestoreAdapterConfig):
        raise ValueError(f"adapter {adapter_name!r} is not a RESTORE adapter (got {type(config).__name__})")
    return adapter_name, config


def surgery_adapters(model: nn.Module) -> tuple[SurgeryAdapter, SurgeryAdapter]:
    clip, family = unwrap_model(model), family_of(model)
    return clip.get_submodule(family.text_projection), clip.get_submodule(family.visual_projection)


def restore_prompt_pairs(model: nn.Module, adapter_name: str | None = None) -> list[tuple[torch.Tensor, ...]]:
    """(P_t, P_v) per deep layer of the RESTORE adapter of `model` (a `PeftModel`), with gradients."""
    adapter_name, config = restore_adapter(model, adapter_name)
    return prompt_pairs(unwrap_model(model), config, adapter_name)


@torch.no_grad()
def update_restore_ratios(model: nn.Module, epoch: int, num_epochs: int, adapter_name: str | None = None) -> bool:
    """RESTORE's dynamic ratio rule; call it at the end of every epoch with that epoch's 0-based index.

    Once, at the first call with `epoch >= num_epochs // 3` (the released code updates after epoch
    `max_epoch // 3`): `r_t += text_ratio_step · S_t` and `r_v += vision_ratio_step · S_v`, S being the mean over
    the deep layers of ‖PᵀP‖_F of the current prompts. The saved `restore_updated` flag makes it idempotent, also
    across save/load and resumed runs. Returns True when the ratios changed.
    """
    for name, value in (("epoch", epoch), ("num_epochs", num_epochs)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "num_epochs" else 0):
            raise ValueError(f"`{name}` must be an int >= {1 if name == 'num_epochs' else 0}, got {value!r}")
    adapter_name, config = restore_adapter(model, adapter_name)
    text_adapter, vision_adapter = surgery_adapters(model)
    if epoch < num_epochs // 3 or bool(text_adapter.restore_updated[adapter_name]):
        return False
    pairs = prompt_pairs(unwrap_model(model), config, adapter_name)
    if pairs:
        shift_t = torch.stack([gram_norm(p_t) for p_t, _ in pairs]).mean()
        shift_v = torch.stack([gram_norm(p_v) for _, p_v in pairs]).mean()
    else:
        logger.warning("RESTORE adapter %r has no deep coupled layers: the ratios stay unchanged", adapter_name)
        shift_t = shift_v = torch.zeros(())
    for adapter, step, shift in (
        (text_adapter, config.text_ratio_step, shift_t),
        (vision_adapter, config.vision_ratio_step, shift_v),
    ):
        ratio = adapter.restore_ratio[adapter_name]
        ratio.add_((step * shift).to(ratio))
        adapter.restore_updated[adapter_name].fill_(True)
    logger.info(
        "RESTORE ratios updated at epoch %d: r_t=%.5f, r_v=%.5f",
        epoch,
        float(text_adapter.restore_ratio[adapter_name]),
        float(vision_adapter.restore_ratio[adapter_name]),
    )
    return True


class RestoreModel(DeepPromptModel):
    """Creates RESTORE from a `RestoreAdapterConfig`: MaPLe deep prompts plus surgery adapters on both projections."""

    prefix = "restore_"

    def wrapper_for(self, config: RestoreAdapterConfig, key: str) -> type[VLPromptLayer]:
        if key in (self._backbone.text_projection, self._backbone.visual_projection):
            return SurgeryAdapter
        return super().wrapper_for(config, key)

    def _link_layers(self, model: nn.Module, adapter_name: str) -> None:
        super()._link_layers(model, adapter_name)
        # initial ‖P⁰ᵀP⁰‖_F per deep layer, stored now (not on a first forward) so they are saved with the adapter
        config = self.peft_config[adapter_name]
        pairs = prompt_pairs(model, config, adapter_name)
        if any(p.is_meta for pair in pairs for p in pair):
            return  # low_cpu_mem_usage loading: the saved values are loaded next
        text_adapter = model.get_submodule(self._backbone.text_projection)
        vision_adapter = model.get_submodule(self._backbone.visual_projection)
        with torch.no_grad():
            for adapter, tower in ((text_adapter, 0), (vision_adapter, 1)):
                norms = adapter.restore_init_norms[adapter_name]
                if pairs:
                    norms.copy_(torch.stack([gram_norm(pair[tower]) for pair in pairs]).to(norms))
