from ..._peft_compat import register_method
from .config import CoCoOpConfig
from .layer import ConditionalContextEmbedding, image_conditioning
from .model import CoCoOpModel

register_method(name="cocoop", config_cls=CoCoOpConfig, model_cls=CoCoOpModel)

__all__ = ["CoCoOpConfig", "CoCoOpModel", "ConditionalContextEmbedding", "image_conditioning"]
