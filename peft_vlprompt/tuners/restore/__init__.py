from ..._peft_compat import register_method
from .config import RESTORE_DATASET_SETTINGS, RestoreAdapterConfig, restore_preset
from .layer import SurgeryAdapter
from .model import RestoreModel, gram_norm, restore_prompt_pairs, update_restore_ratios

register_method(name="restore", config_cls=RestoreAdapterConfig, model_cls=RestoreModel)

__all__ = [
    "RESTORE_DATASET_SETTINGS",
    "RestoreAdapterConfig",
    "RestoreModel",
    "SurgeryAdapter",
    "gram_norm",
    "restore_preset",
    "restore_prompt_pairs",
    "update_restore_ratios",
]
