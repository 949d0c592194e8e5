"""Context slots on a tokenizer WITHOUT a start token (as SigLIP's sentencepiece): the tiny word-level tokenizer of
`tests/tiny_siglip.py` (lower-cased, so the placeholder "X" is the word "x" of "x-ray", and only "</s>" appended).

The hand re-statement writes each prompt's token list by hand from the vocabulary (never through the tokenizer or
the library's slot finder): the context vectors replace exactly the placeholder positions, the class-name tokens
(including the "x" of "x-ray") keep their own embeddings.
"""

import pytest
import torch
from peft import get_peft_model

from peft_vlprompt import CoOpConfig, DeepPromptConfig, PromptClassifier
from peft_vlprompt.tuners.tokens import leading_special_tokens
from tests.tiny import pixels
from tests.tiny import tokenizer as clip_tokenizer
from tests.tiny_siglip import EOS, MAX_LEN, VOCAB, logits_through_the_towers, tiny_siglip, word_tokenizer

N_CTX = 4
CLASSNAMES = ["x-ray", "cat", "golden retriever"]
CLASS_TOKENS = [["x", "-", "ray"], ["cat"], ["golden", "retriever"]]  # by hand


def hand_prompt(position: str, ctx: torch.Tensor, class_ids: list[int], emb: torch.Tensor) -> torch.Tensor:
    """(MAX_LEN, d) input embeddings of one prompt: no start token; context/class by layout; "." "</s>"; "</s>" pads."""
    ctx_rows, cls = list(ctx), [emb[i] for i in class_ids]
    half = N_CTX // 2
    body = {"end": ctx_rows + cls, "front": cls + ctx_rows, "middle": ctx_rows[:half] + cls + ctx_rows[half:]}
    rows = body[position] + [emb[VOCAB["."]]] + [emb[EOS]] * (MAX_LEN - len(body[position]) - 1)
    return torch.stack(rows)


def hand_logits(ctx: torch.Tensor, position: str, images: torch.Tensor) -> torch.Tensor:
    base = tiny_siglip()
    text = base.text_model
    emb = text.embeddings.token_embedding.weight.detach()
    x = torch.stack([hand_prompt(position, ctx, [VOCAB[w] for w in words], emb) for words in CLASS_TOKENS])
    return logits_through_the_towers(base, x, images)


def test_leading_special_tokens_follow_the_tokenizer():
    assert word_tokenizer()("x-ray.")["input_ids"] == [VOCAB[w] for w in ["x", "-", "ray", "."]] + [EOS]
    assert leading_special_tokens(word_tokenizer()) == 0
    assert leading_special_tokens(clip_tokenizer()) == 1  # <|startoftext|>


def test_siglip_layers_default_to_no_start_token():
    model = get_peft_model(tiny_siglip(), CoOpConfig(n_ctx=N_CTX))
    assert model.base_model.model.text_model.embeddings.token_embedding.text_start == 0


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_context_replaces_exactly_the_placeholders(position):
    model = get_peft_model(tiny_siglip(), CoOpConfig(n_ctx=N_CTX, class_token_position=position))
    layer = model.base_model.model.text_model.embeddings.token_embedding
    layer.text_start = 1  # a stale value: the classifier must set it from its tokenizer
    ctx = layer.coop_ctx["default"]
    with torch.no_grad():
        ctx.normal_()
        clf = PromptClassifier(model, word_tokenizer(), CLASSNAMES).eval()
        ours = clf(pixels())
        theirs = hand_logits(ctx.detach(), position, pixels())
        assert layer.text_start == 0
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
        # the class-name tokens (the "x" of "x-ray" included) keep their own embeddings
        ids = clf.tokenize(clf.prompts(clf.prompt_config()))
        out, base = layer(ids), layer.base_layer(ids)
        replaced = (out != base).any(dim=-1)
        assert replaced.sum(dim=1).tolist() == [N_CTX] * len(CLASSNAMES)
        assert (ids[replaced] == VOCAB["x"]).all()  # only placeholders were replaced


def test_deep_text_prompts_start_at_position_zero():
    config = DeepPromptConfig(text_lengths=[2, 2], vision_lengths=[0, 0])
    model = get_peft_model(tiny_siglip(), config)
    text = model.base_model.model.text_model
    PromptClassifier(model, word_tokenizer(), CLASSNAMES).eval()(pixels())  # sets the layers from its tokenizer
    ids = word_tokenizer()(["x x cat."], padding="max_length", max_length=MAX_LEN, return_tensors="pt")["input_ids"]
    embedding = text.embeddings.token_embedding
    with torch.no_grad():
        out, base = embedding(ids), embedding.base_layer(ids)
    prompts = embedding.prompts("default")
    assert torch.equal(out[0, :2], prompts.to(out.dtype))  # the two slots at positions 0, 1 (no start token)
    assert torch.equal(out[0, 2:], base[0, 2:])
    deep = text.encoder.layers[1]
    assert deep.text_start == 0
