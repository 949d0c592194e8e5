"""ProGrad-CoOp tuner (CoOp's context embedding under its own peft type) and the optimizer helper."""

import torch

from ...optim import ProGrad
from ..coop.model import CoOpModel
from .config import ProGradCoOpConfig


class ProGradCoOpModel(CoOpModel):
    """Creates CoOp context from a `ProGradCoOpConfig`. Only the context is trainable and saved."""

    prefix = "prograd_coop_"


def make_prograd_optimizer(optimizer: torch.optim.Optimizer, config: ProGradCoOpConfig, **kwargs) -> ProGrad:
    """Wrap `optimizer` in `ProGrad` with the config's `lambda_` (extra `kwargs` go to `ProGrad`, e.g. `eps`)."""
    if not isinstance(config, ProGradCoOpConfig):
        raise TypeError(f"`config` must be a ProGradCoOpConfig, got {type(config).__name__}")
    return ProGrad(optimizer, lambda_=config.lambda_, **kwargs)
