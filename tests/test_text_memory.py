"""The text tower's memory budget (issue 11, item 23): CoCoOp's (image x class) rows are encoded in calls bounded by
`text_memory_budget`, recomputed in backward when all rows' activations would not fit; the numbers do not change.

The peak-memory measurement for 1000 classes is `examples/benchmarks/text_memory.py` (not a test: no timed or
machine-dependent asserts here).
"""

import logging

import pytest
import torch
from peft import get_peft_model

from peft_vlprompt import CoCoOpConfig, CoOpConfig, PromptClassifier
from tests.tiny import pixels, tiny_clip, tokenizer

CLASSES = [f"class {i}" for i in range(7)]


def logits_and_grads(config, budget: int, chunk: int = 256):
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), config)
    clf = PromptClassifier(model, tokenizer(), CLASSES, class_chunk_size=chunk, text_memory_budget=budget)
    clf.train()
    logits = clf(pixels(3))
    (logits.logsumexp(-1).sum() - logits[:, 2].sum()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return clf, logits.detach(), grads


@pytest.mark.parametrize("config_cls", [CoCoOpConfig, CoOpConfig])
def test_chunked_and_recomputed_encoding_gives_the_same_logits_and_gradients(config_cls, caplog):
    clf, logits, grads = logits_and_grads(config_cls(n_ctx=4), budget=2**40)
    assert clf.text_row_bytes(10, keep_for_backward=True) > 1
    # a budget of one row per call: 3 x 7 = 21 CoCoOp rows (7 CoOp rows), each call checkpointed
    one_row = clf.text_row_bytes(16, keep_for_backward=True)
    with caplog.at_level(logging.INFO, logger="peft_vlprompt.classifier"):
        _, small_logits, small_grads = logits_and_grads(config_cls(n_ctx=4), budget=one_row)
    rows = 21 if config_cls is CoCoOpConfig else 7
    assert f"text tower: {rows} prompt rows" in caplog.text
    assert f"1 rows per call ({rows} calls), recomputed in backward to stay within `text_memory_budget`" in caplog.text
    torch.testing.assert_close(small_logits, logits, rtol=1e-5, atol=1e-5)  # float rounding only
    assert grads.keys() == small_grads.keys() and grads
    for name in grads:
        # the rows' contributions are summed in another order: float32 rounding, far below a wrong conditioning
        scale = grads[name].abs().max().item()
        torch.testing.assert_close(small_grads[name], grads[name], rtol=1e-4, atol=1e-4 * scale)


def test_the_estimate_follows_the_text_towers_sizes():
    # hand re-statement for the tiny text tower: width 32, MLP 64, 4 heads, 2 layers, float32
    clf = PromptClassifier(tiny_clip(), tokenizer(), CLASSES)
    per_layer = 10 * (8 * 32 + 3 * 64 + 2 * 4 * 10)
    assert clf.text_row_bytes(10, keep_for_backward=True) == per_layer * 2 * 4
    assert clf.text_row_bytes(10, keep_for_backward=False) == per_layer * 4
    with pytest.raises(ValueError, match=r"`text_memory_budget` must be a number of bytes >= 1, got 0"):
        PromptClassifier(tiny_clip(), tokenizer(), CLASSES, text_memory_budget=0)
