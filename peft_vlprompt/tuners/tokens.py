"""CLIP BPE helpers shared by the methods (the vocabulary is the same for every CLIP checkpoint)."""

import functools

from ..assets import clip_tokenizer_path

PLACEHOLDER_TOKEN = "X"
PLACEHOLDER_TOKEN_ID = 343  # "x</w>" in CLIP's BPE (the tokenizer lower-cases)


@functools.lru_cache(maxsize=1)
def clip_tokenizer():
    """OpenAI's CLIP tokenizer from the files shipped with the package (no Hub access needed)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(clip_tokenizer_path())


def clip_token_ids(text: str) -> list[int]:
    """BPE ids of `text` without the start/end tokens."""
    return clip_tokenizer()(text, add_special_tokens=False)["input_ids"]


def class_text(classname: str) -> str:
    """The one rule turning a class name into prompt text, used by every method and zero-shot: underscores become
    spaces, as the released CoOp-family code does (`golden_retriever` -> "golden retriever")."""
    return classname.replace("_", " ")
