from ..._peft_compat import register_method
from .config import CoOpConfig
from .layer import ContextEmbedding
from .model import CoOpModel

register_method(name="coop", config_cls=CoOpConfig, model_cls=CoOpModel)

__all__ = ["ContextEmbedding", "CoOpConfig", "CoOpModel"]
