"""Tiny CLIP models and the real CLIP tokenizer for tests (CPU, offline)."""

import functools

import torch
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

from peft_vlprompt.assets import clip_tokenizer_path

TEXT_WIDTH, VISION_WIDTH, PROJ_DIM, IMAGE_SIZE = 32, 40, 24, 32


def tiny_clip_config(attn: str = "eager", text_layers: int = 2, vision_layers: int = 2) -> CLIPConfig:
    config = CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=64,
            num_hidden_layers=text_layers,
            num_attention_heads=4,
            max_position_embeddings=77,
            eos_token_id=49407,
            bos_token_id=49406,
            pad_token_id=49407,
        ),
        vision_config=dict(
            image_size=IMAGE_SIZE,
            patch_size=8,
            hidden_size=VISION_WIDTH,
            intermediate_size=80,
            num_hidden_layers=vision_layers,
            num_attention_heads=4,
        ),
        projection_dim=PROJ_DIM,
    )
    config._attn_implementation = attn
    return config


def tiny_clip(seed: int = 0, attn: str = "eager", **kwargs) -> CLIPModel:
    """A deterministic tiny CLIP (same seed -> same weights), in eval mode."""
    torch.manual_seed(seed)
    return CLIPModel(tiny_clip_config(attn, **kwargs)).eval()


@functools.lru_cache(maxsize=1)
def tokenizer() -> CLIPTokenizer:
    return CLIPTokenizer.from_pretrained(clip_tokenizer_path())


def pixels(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(seed))


def pipeline_images(n: int = 4) -> list:
    """`n` noisy single-colour 40x48 PIL images (not square, so a pipeline's resize and crop take part)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = rng.integers(0, 255, (n, 1, 1, 3))
    return [Image.fromarray(np.clip(c + rng.normal(0, 60, (40, 48, 3)), 0, 255).astype(np.uint8)) for c in colours]


def pipeline_scores(outputs: list, classnames: list[str]) -> torch.Tensor:
    """A zero-shot pipeline's per-image label scores as an (images, classes) tensor in `classnames` order."""
    return torch.tensor([[{d["label"]: d["score"] for d in out}[name] for name in classnames] for out in outputs])
