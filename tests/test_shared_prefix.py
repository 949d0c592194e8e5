"""Shared-prefix text encoding equals the full text tower (transformers' own `get_text_features`), for every method.

Each case trains the same adapter (every tensor randomised to a visible scale) through `PromptClassifier` with
`shared_prefix=True` and `False` and compares logits (<= 1e-5 relative) and every adapter gradient (<= 1e-4
relative), fp32, eager and sdpa. The full path is transformers' CLIP text tower, independent of the code under test.
"""

import copy

import pytest
import torch
from peft import get_peft_model

from peft_vlprompt import (
    CoCoOpConfig,
    CoOpConfig,
    DeepPromptConfig,
    DPLSearchConfig,
    KgCoOpConfig,
    ProGradCoOpConfig,
    PromptClassifier,
    RestoreAdapterConfig,
    ivlp_preset,
    maple_preset,
    promptsrc_preset,
)
from peft_vlprompt.text_prefix import shared_prefix_text_features
from tests.tiny import pixels, tiny_clip, tokenizer

LAYERS = 3
CLASSES = ["cat", "sea lion", "golden retriever", "golden eagle", "x-ray"]  # two share their first token
GOLDEN = ["golden retriever", "golden eagle", "golden gate bridge"]  # every name shares its first token

CASES = {
    "coop_end": lambda: CoOpConfig(n_ctx=4),
    "coop_middle": lambda: CoOpConfig(n_ctx=4, class_token_position="middle"),
    "coop_front": lambda: CoOpConfig(n_ctx=4, class_token_position="front"),
    "coop_ctx_init": lambda: CoOpConfig(ctx_init="a photo of a"),
    "coop_csc": lambda: CoOpConfig(n_ctx=4, class_specific=True, n_classes=len(CLASSES)),
    "prograd": lambda: ProGradCoOpConfig(n_ctx=4),
    "kgcoop": lambda: KgCoOpConfig(n_ctx=4),
    "cocoop": lambda: CoCoOpConfig(n_ctx=4),
    "ivlp": lambda: ivlp_preset(LAYERS, depth=LAYERS),
    "maple": lambda: maple_preset(LAYERS, depth=2),
    "promptsrc": lambda: promptsrc_preset(LAYERS, depth=LAYERS),
    "restore": lambda: RestoreAdapterConfig(text_lengths=[2, 3, 0], vision_lengths=[2, 3, 0]),
    "dpl_prefix": lambda: DeepPromptConfig(mode="prefix", text_lengths=[2, 1, 3], vision_lengths=[1, 0, 0]),
    "dpl_search": lambda: DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]),
}
# where the prompts share at least 2 tokens (otherwise the classifier falls back to the full tower by design)
SHARES = {"coop_end", "coop_middle", "coop_ctx_init", "prograd", "kgcoop", "cocoop", "ivlp", "maple", "promptsrc",
          "restore", "dpl_prefix"}  # fmt: skip


def build(case: str, attn: str, seed: int = 0):
    model = get_peft_model(tiny_clip(seed, attn=attn, text_layers=LAYERS, vision_layers=LAYERS), CASES[case]())
    gen = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for _, param in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    return model


def step(model, classes, shared: bool, compile_: bool = False, chunk: int = 256):
    """(logits, {name: grad}) of one step through the classifier."""
    model.zero_grad(set_to_none=True)
    clf = PromptClassifier(model, tokenizer(), classes, shared_prefix=shared, class_chunk_size=chunk).train()
    forward = torch.compile(clf, backend="aot_eager") if compile_ else clf
    pix = pixels(3, seed=2)
    logits = forward(pix)
    # a fixed random functional of the logits: non-zero gradients even with one class (where cross-entropy has none)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))
    (logits * weights).sum().backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}
    return logits.detach(), grads


def assert_same(shared, full):
    (logits_s, grads_s), (logits_f, grads_f) = shared, full
    assert (logits_s - logits_f).abs().max() <= 1e-5 * logits_f.abs().max()
    assert grads_f and grads_s.keys() == grads_f.keys()
    for name, grad in grads_f.items():
        assert grad.abs().max() > 0, name  # every adapter tensor is exercised
        assert (grads_s[name] - grad).norm() <= 1e-4 * grad.norm(), name


def uses_shared_path(model, classes) -> bool:
    clf = PromptClassifier(model, tokenizer(), classes)
    ids = clf.tokenize(clf.prompts(clf.prompt_config()))
    if getattr(clf.prompt_config(), "image_conditioned", False):
        from peft_vlprompt.tuners.cocoop.layer import image_conditioning

        with image_conditioning(model, torch.randn(1, model.base_model.model.config.projection_dim)):
            return shared_prefix_text_features(model, ids) is not None
    return shared_prefix_text_features(model, ids) is not None


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_shared_prefix_equals_full_tower(case, attn):
    model = build(case, attn)
    classes = CLASSES
    assert_same(step(model, classes, shared=True), step(model, classes, shared=False))
    assert uses_shared_path(model, classes) == (case in SHARES)


@pytest.mark.parametrize("case", ["coop_front", "coop_middle", "ivlp"])
def test_names_sharing_their_first_tokens(case):
    # "front": the shared prefix is [SOS] + "golden", the context comes after the class name
    model = build(case, "sdpa", seed=1)
    assert_same(step(model, GOLDEN, shared=True), step(model, GOLDEN, shared=False))
    assert uses_shared_path(model, GOLDEN)


@pytest.mark.parametrize("case", ["coop_end", "cocoop", "maple", "dpl_prefix"])
def test_one_class(case):
    model = build(case, "eager", seed=2)
    assert_same(step(model, ["sea lion"], shared=True), step(model, ["sea lion"], shared=False))


def test_zero_shot_template_and_eval_features():
    # no adapter at all: the template's "a photo of a" is the shared prefix
    base = tiny_clip(3, attn="sdpa", text_layers=LAYERS, vision_layers=LAYERS)
    shared = PromptClassifier(base, tokenizer(), CLASSES).eval().text_features()
    full = PromptClassifier(copy.deepcopy(base), tokenizer(), CLASSES, shared_prefix=False).eval().text_features()
    assert (shared - full).abs().max() <= 1e-5


def test_gradient_checkpointing_on_the_shared_path():
    model = build("ivlp", "sdpa")
    full = step(model, CLASSES, shared=False)
    model.base_model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    assert_same(step(model, CLASSES, shared=True), full)


@pytest.mark.parametrize("case", ["coop_end", "cocoop"])
def test_chunked_calls_each_encode_their_own_prefix(case):
    # 2 rows per text-tower call: every call (for CoCoOp, every image within it) recomputes its prefix
    model = build(case, "sdpa", seed=4)
    assert_same(step(model, CLASSES, shared=True, chunk=2), step(model, CLASSES, shared=False))


@pytest.mark.slow
def test_under_torch_compile():
    model = build("coop_end", "sdpa")
    assert_same(step(model, CLASSES, shared=True, compile_=True), step(model, CLASSES, shared=False))


def test_flag_is_checked():
    with pytest.raises(ValueError, match="shared_prefix"):
        PromptClassifier(tiny_clip(0), tokenizer(), CLASSES, shared_prefix="yes")
