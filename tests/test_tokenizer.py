import json

from peft_vlprompt.assets import CLIP_TOKENIZER_DIR
from tests.tiny import tokenizer


def test_shipped_bpe_is_openai_clip():
    assert tokenizer()("a photo of a cat.")["input_ids"] == [49406, 320, 1125, 539, 320, 2368, 269, 49407]
    assert len(tokenizer()) == 49408
    vocab = json.loads((CLIP_TOKENIZER_DIR / "vocab.json").read_text(encoding="utf-8"))
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and vocab["x</w>"] == 343
