"""The offline toy world (procedural coloured shapes in several domains) and a toy CLIP pretrained on it.

>>> from peft_vlprompt.toy import load_toy_clip, toy_splits
>>> model, processor = load_toy_clip()
>>> splits = toy_splits("objects", "photo", n_train_per_class=16, n_val_per_class=4, n_test_per_class=20, seed=0)
>>> splits["test"].features["label"].names[:2]
['red circle', 'blue circle']
"""

from ..model_refs import TOY_CLIP_DIR, TOY_CLIP_NAME, TOY_SIGLIP_DIR, TOY_SIGLIP_NAME
from .captions import HELD_OUT_TEMPLATES
from .splits import image_seed, toy_example, toy_splits
from .world import (
    COLORS,
    DOMAINS,
    IMAGE_SIZE,
    OBJECT_CLASSES,
    OBJECT_NAMES,
    SHAPES,
    TASKS,
    ToyTask,
    classnames,
    get_task,
    list_domains,
    list_tasks,
    render,
    render_array,
)

# the downstream default: the domain the pretraining saw least of (20% of images, and cleaner ones)
DEFAULT_DOMAIN = "photo"


def toy_clip_path() -> str:
    """Directory of the shipped toy CLIP (loads with `CLIPModel/CLIPProcessor.from_pretrained` and `pipeline`).

    Adapters trained on it record the portable name `TOY_CLIP_NAME` ("peft-vlprompt/toy-clip") instead of this
    path; our configs resolve that name back to this folder when they are loaded, on any machine.
    """
    return str(TOY_CLIP_DIR)


def toy_siglip_path() -> str:
    """Directory of the shipped toy SigLIP (sigmoid loss, a word-level toy tokenizer; see `toy/families.py`).

    Adapters trained on it record the portable name `TOY_SIGLIP_NAME` ("peft-vlprompt/toy-siglip")."""
    return str(TOY_SIGLIP_DIR)


def load_toy_clip():
    """Load the shipped toy CLIP. Returns `(CLIPModel, CLIPProcessor)`, the model in eval mode."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(toy_clip_path())
    return model.eval(), AutoProcessor.from_pretrained(toy_clip_path())


def load_toy_siglip():
    """Load the shipped toy SigLIP. Returns `(SiglipModel, SiglipProcessor)`, the model in eval mode."""
    from transformers import AutoModel, AutoProcessor

    model = AutoModel.from_pretrained(toy_siglip_path())
    return model.eval(), AutoProcessor.from_pretrained(toy_siglip_path())


__all__ = [
    "COLORS",
    "DEFAULT_DOMAIN",
    "DOMAINS",
    "HELD_OUT_TEMPLATES",
    "IMAGE_SIZE",
    "OBJECT_CLASSES",
    "OBJECT_NAMES",
    "SHAPES",
    "TASKS",
    "TOY_CLIP_DIR",
    "TOY_CLIP_NAME",
    "TOY_SIGLIP_DIR",
    "TOY_SIGLIP_NAME",
    "ToyTask",
    "classnames",
    "get_task",
    "image_seed",
    "list_domains",
    "list_tasks",
    "load_toy_clip",
    "load_toy_siglip",
    "render",
    "render_array",
    "toy_clip_path",
    "toy_siglip_path",
    "toy_example",
    "toy_splits",
]
