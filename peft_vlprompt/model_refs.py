"""Portable names for models shipped inside the package.

An adapter records its base model (`base_model_name_or_path`). For the shipped toy CLIP that would be an absolute path
into one checkout, useless anywhere else; adapters record the stable name `peft-vlprompt/toy-clip` instead, which our
configs (and so `PeftModel`/`AutoPeftModel.from_pretrained`, `load_prompts`, `examples/train.py --model`) resolve to
the installed copy when they are loaded. Kept outside `toy/` so that resolving a name does not import the toy world.
"""

import os
from pathlib import Path

TOY_CLIP_NAME = "peft-vlprompt/toy-clip"
TOY_CLIP_DIR = Path(__file__).parent / "toy" / "toy_clip"


def resolve_model_reference(name: str | os.PathLike | None) -> str | os.PathLike | None:
    """The folder to load for `name`: the installed toy CLIP for `TOY_CLIP_NAME`, anything else unchanged."""
    return str(TOY_CLIP_DIR) if isinstance(name, str) and name.rstrip("/") == TOY_CLIP_NAME else name


def portable_model_reference(name: str | os.PathLike | None) -> str | os.PathLike | None:
    """What to record for `name`: `TOY_CLIP_NAME` for (any path to) the installed toy CLIP, anything else unchanged."""
    if isinstance(name, (str, os.PathLike)) and os.path.isdir(name):
        try:
            if os.path.samefile(name, TOY_CLIP_DIR):
                return TOY_CLIP_NAME
        except OSError:
            pass
    return name
