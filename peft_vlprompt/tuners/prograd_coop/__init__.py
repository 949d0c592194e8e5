from ..._peft_compat import register_method
from .config import ProGradCoOpConfig
from .model import ProGradCoOpModel, make_prograd_optimizer

register_method(name="prograd_coop", config_cls=ProGradCoOpConfig, model_cls=ProGradCoOpModel)

__all__ = ["ProGradCoOpConfig", "ProGradCoOpModel", "make_prograd_optimizer"]
