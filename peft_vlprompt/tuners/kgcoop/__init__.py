from ..._peft_compat import register_method
from .config import KgCoOpConfig
from .model import KgCoOpModel

register_method(name="kgcoop", config_cls=KgCoOpConfig, model_cls=KgCoOpModel)

__all__ = ["KgCoOpConfig", "KgCoOpModel"]
