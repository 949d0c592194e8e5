"""Baselines trained and evaluated by the same loop as the prompt methods: CLIP-LoRA (a peft `LoraConfig` preset) and
linear probes on frozen image features."""

from .clip_lora import CLIP_LORA_RECIPE, clip_lora_config

__all__ = ["CLIP_LORA_RECIPE", "clip_lora_config"]
