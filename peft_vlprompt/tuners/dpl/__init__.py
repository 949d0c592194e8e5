from ..._peft_compat import register_method
from .config import DPLSearchConfig
from .layer import SupernetAttention
from .model import (
    DPLSearchModel,
    alpha_logits,
    alpha_parameters,
    candidate_lengths,
    chosen_lengths,
    chosen_prompts,
    prompt_parameters,
    set_mixing,
    supernet_layers,
)

register_method(name="dpl", config_cls=DPLSearchConfig, model_cls=DPLSearchModel)

__all__ = [
    "DPLSearchConfig",
    "DPLSearchModel",
    "SupernetAttention",
    "alpha_logits",
    "alpha_parameters",
    "candidate_lengths",
    "chosen_lengths",
    "chosen_prompts",
    "prompt_parameters",
    "set_mixing",
    "supernet_layers",
]
