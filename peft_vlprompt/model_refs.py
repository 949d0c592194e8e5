"""Portable names for models shipped inside the package.

An adapter records its base model (`base_model_name_or_path`). For a shipped toy model that would be an absolute path
into one checkout, useless anywhere else; adapters record a stable name instead (`peft-vlprompt/toy-clip`,
`peft-vlprompt/toy-siglip`), which our configs (and so `PeftModel`/`AutoPeftModel.from_pretrained`, `load_prompts`,
`examples/train.py --model`) resolve to the installed copy when they are loaded. Kept outside `toy/` so that
resolving a name does not import the toy world.
"""

import os
from pathlib import Path

TOY_CLIP_NAME = "peft-vlprompt/toy-clip"
TOY_CLIP_DIR = Path(__file__).parent / "toy" / "toy_clip"
TOY_SIGLIP_NAME = "peft-vlprompt/toy-siglip"
TOY_SIGLIP_DIR = Path(__file__).parent / "toy" / "toy_siglip"
SHIPPED_MODELS = {TOY_CLIP_NAME: TOY_CLIP_DIR, TOY_SIGLIP_NAME: TOY_SIGLIP_DIR}


def resolve_model_reference(name: str | os.PathLike | None) -> str | os.PathLike | None:
    """The folder to load for `name`: the installed copy for a shipped model's name, anything else unchanged."""
    if isinstance(name, str) and name.rstrip("/") in SHIPPED_MODELS:
        return str(SHIPPED_MODELS[name.rstrip("/")])
    return name


def portable_model_reference(name: str | os.PathLike | None) -> str | os.PathLike | None:
    """What to record for `name`: the shipped model's name for (any path to) its installed copy, else unchanged."""
    if isinstance(name, (str, os.PathLike)) and os.path.isdir(name):
        for shipped_name, folder in SHIPPED_MODELS.items():
            try:
                if folder.is_dir() and os.path.samefile(name, folder):
                    return shipped_name
            except OSError:
                pass
    return name
