"""A tiny random MetaCLIP 2 model and an XLM-V-like tokenizer built offline.

Real MetaCLIP 2 checkpoints use XLM-V's sentencepiece tokenizer (`<s>` = 0, `<pad>` = 1, `</s>` = 2, one start token)
and set `eos_token_id = 2`. It cannot be downloaded at test time and is not shipped, so the tests build a word-level
tokenizer with exactly that special-token layout: EOS = 2 is the case where CLIP's legacy argmax pooling would pick the
wrong position, and padding with id 1 after the EOS is what a real checkpoint sees.

The module tree is CLIP's, so `tests/reference_clip.py` restates its forward; the text is pooled at the FIRST `</s>`
(`first_eos` below, written from the ids, not from the library).
"""

import re

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import MetaClip2Config, MetaClip2Model, PreTrainedTokenizerFast

WORDS = ["a", "photo", "of", "the", ".", "X", "cat", "dog", "golden", "retriever", "eagle", "sea", "lion"]
SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # XLM-V's ids 0..3
BOS, PAD, EOS = 0, 1, 2
VOCAB, MAX_LEN, TEXT_WIDTH, VISION_WIDTH, PROJ = 32, 16, 32, 40, 24


def template_words(templates: list[str]) -> list[str]:
    """Every word / punctuation mark of `templates` (for a tokenizer that knows them all)."""
    words = []
    for template in templates:
        for word in re.findall(r"\w+|[^\w\s]", template.replace("{}", " ")):
            if word not in words:
                words.append(word)
    return words


def xlmv_like_tokenizer(words: list[str] = WORDS) -> PreTrainedTokenizerFast:
    """Words -> ids 4.., wrapped as `<s> text </s>` like XLM-V's tokenizer."""
    vocab = {tok: i for i, tok in enumerate(SPECIALS + [w for w in dict.fromkeys(words) if w not in SPECIALS])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace(), pre_tokenizers.Punctuation()])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>")  # fmt: skip


def tiny_metaclip2(seed: int = 0, attn: str = "eager", layers: int = 2, vocab: int = VOCAB) -> MetaClip2Model:
    """A deterministic tiny MetaCLIP 2 (same seed -> same weights), in eval mode; `pixels()` of `tests/tiny.py` fit."""
    torch.manual_seed(seed)
    config = MetaClip2Config(
        text_config=dict(vocab_size=vocab, hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, max_position_embeddings=MAX_LEN, bos_token_id=BOS,
                         pad_token_id=PAD, eos_token_id=EOS),
        vision_config=dict(image_size=32, patch_size=8, hidden_size=VISION_WIDTH, intermediate_size=80,
                           num_hidden_layers=layers, num_attention_heads=4),
        projection_dim=PROJ,
    )  # fmt: skip
    config._attn_implementation = attn
    config.text_config._attn_implementation = attn
    config.vision_config._attn_implementation = attn
    return MetaClip2Model(config).eval()


def first_eos(input_ids: torch.Tensor) -> torch.Tensor:
    """(B,) position of each row's first `</s>` (what MetaCLIP 2 pools), found by scanning the ids."""
    return torch.tensor([row.index(EOS) for row in input_ids.tolist()])
