"""Backbone adapters: the only code that knows module paths and sizes inside the supported models."""

from .clip import ClipBackbone, attention_projections, unwrap_clip

__all__ = ["ClipBackbone", "attention_projections", "unwrap_clip"]
