"""Method hooks the loop calls without knowing the method: image conditioning and epoch-end updates."""

import logging

logger = logging.getLogger(__name__)


def _configs(model):
    configs = getattr(model, "peft_config", None)
    if not isinstance(configs, dict) or not configs:
        return []  # a plain CLIPModel (zero-shot)
    active = getattr(model, "active_adapters", None)
    active = active() if callable(active) else active
    return [configs[name] for name in (active or list(configs)) if name in configs]


def image_conditioned(model) -> bool:
    """Whether the active adapter's text prompts depend on the image (CoCoOp): its config says so."""
    return any(getattr(config, "image_conditioned", False) for config in _configs(model))


def _restore_update(model, epoch: int, num_epochs: int) -> None:
    from ..tuners.restore import update_restore_ratios

    update_restore_ratios(model, epoch, num_epochs)


# peft type -> update called after every epoch with the 0-based epoch index (idempotency is the method's business)
EPOCH_END_UPDATES = {"restore": _restore_update}


def epoch_end_hooks(model, epoch: int, num_epochs: int) -> None:
    """Per-epoch method updates, e.g. RESTORE's one-time ratio update at epoch num_epochs // 3."""
    for config in _configs(model):
        update = EPOCH_END_UPDATES.get(str(getattr(config.peft_type, "value", config.peft_type)).lower())
        if update is not None:
            update(model, epoch, num_epochs)
