"""CLIP BPE helpers shared by the methods (the vocabulary is the same for every CLIP checkpoint)."""

PLACEHOLDER_TOKEN = "X"
PLACEHOLDER_TOKEN_ID = 343  # "x</w>" in CLIP's BPE (the tokenizer lower-cases)


def clip_tokenizer():
    """OpenAI's CLIP tokenizer from the files shipped with the package (no Hub access needed).

    Configs tokenize `ctx_init` and store the placeholder id with it when they are built, before any model is seen;
    resolving these per family at injection time is the next step of the backbone interface (issue 13)."""
    from ..backbones.clip import shipped_tokenizer

    return shipped_tokenizer()


def clip_token_ids(text: str) -> list[int]:
    """BPE ids of `text` without the start/end tokens."""
    return clip_tokenizer()(text, add_special_tokens=False)["input_ids"]


def class_text(classname: str) -> str:
    """The one rule turning a class name into prompt text, used by every method and zero-shot: underscores become
    spaces, as the released CoOp-family code does (`golden_retriever` -> "golden retriever")."""
    return classname.replace("_", " ")
