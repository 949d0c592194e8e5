"""Files shipped with the package (OpenAI's CLIP BPE vocabulary, MIT-licensed)."""

from pathlib import Path

CLIP_TOKENIZER_DIR = Path(__file__).parent / "clip_tokenizer"


def clip_tokenizer_path() -> str:
    """Directory holding CLIP's `vocab.json` + `merges.txt` (loads with `CLIPTokenizer.from_pretrained`)."""
    return str(CLIP_TOKENIZER_DIR)
