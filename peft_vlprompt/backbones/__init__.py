"""Backbone adapters: the only code that knows module paths, sizes and model classes of the supported families.

`backbone_for(model)` gives a model's `Backbone`; `load_backbone(path)` loads any supported checkpoint. Each family
is one file registering a `Backbone` subclass (importing it here registers it)."""

from .base import (
    FAMILIES,
    REFUSED,
    Backbone,
    attention_projections,
    backbone_for,
    default_family,
    family_of,
    load_backbone,
    register,
    unwrap_model,
)
from .clip import ClipBackbone, unwrap_clip
from .metaclip2 import MetaClip2Backbone
from .siglip import SiglipBackbone
from .siglip2 import Siglip2Backbone

__all__ = [
    "FAMILIES",
    "REFUSED",
    "Backbone",
    "ClipBackbone",
    "MetaClip2Backbone",
    "Siglip2Backbone",
    "SiglipBackbone",
    "attention_projections",
    "backbone_for",
    "default_family",
    "family_of",
    "load_backbone",
    "register",
    "unwrap_clip",
    "unwrap_model",
]
