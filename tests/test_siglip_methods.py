"""The method x family matrix on SigLIP: every method whose math is defined on a tiny random `SiglipModel` (offline).

Per method: the prompts the classifier writes (checked against the string written by hand), logits against the hand
re-statement of `tests/tiny_siglip.py` (prompt token lists written from the vocabulary, context/prompts substituted
by hand, bidirectional text, last-position pooling, exp(scale) * cos + bias), save/load bit-identical and
`disable_adapter()` equal to the untouched model. Vision prompts that add tokens (dropped before the attention-pooling
head) are tested in `tests/test_siglip_vision_prompts.py`; prefix vision prompts add only keys/values.
"""

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import SiglipImageProcessor, SiglipModel, pipeline

from peft_vlprompt import CoCoOpConfig, CoOpConfig, DeepPromptConfig, PromptClassifier
from peft_vlprompt.hub import hypothesis_template, prompt_pipeline
from peft_vlprompt.tuners.deep_prompt.config import PromptSRCConfig
from peft_vlprompt.tuners.dpl.config import DPLSearchConfig
from peft_vlprompt.tuners.kgcoop.config import KgCoOpConfig
from peft_vlprompt.tuners.prograd_coop.config import ProGradCoOpConfig
from tests.tiny import pipeline_images, pipeline_scores, pixels
from tests.tiny_siglip import (
    assert_auto_peft_model_in_fresh_process,
    image_features,
    prompt_embeds,
    sigmoid_logits,
    text_features,
    tiny_siglip,
    vision_features,
    word_tokenizer,
)

CLASSNAMES = ["x-ray", "cat", "golden retriever"]
CLASS_WORDS = [["x", "-", "ray"], ["cat"], ["golden", "retriever"]]  # by hand
N_CTX = 4


def classifier(model):
    return PromptClassifier(model, word_tokenizer(), CLASSNAMES).eval()


def randomise(model, seed=3, std=1.0):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(std=std)
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def trained(named, key):
    (value,) = [v for n, v in named.items() if key in n]
    return value


def coop_rows(position, ctx, words, base):
    """Input embeddings of one CoOp prompt: the context rows substituted at the layout's placeholder positions."""
    half = N_CTX // 2
    layout = {"end": ["x"] * N_CTX + words, "front": words + ["x"] * N_CTX,
              "middle": ["x"] * half + words + ["x"] * (N_CTX - half)}[position]  # fmt: skip
    rows = prompt_embeds(layout + ["."], base).clone()
    slots = {"end": range(N_CTX), "front": range(len(words), len(words) + N_CTX),
             "middle": [*range(half), *range(half + len(words), len(words) + N_CTX)]}[position]  # fmt: skip
    rows[list(slots)] = ctx
    return rows


# ---- CoOp family: CoOp (3 positions x unified/class-specific), ProGrad-CoOp, KgCoOp ----------------------------
COOP_CASES = {
    **{f"coop-{p}": CoOpConfig(n_ctx=N_CTX, class_token_position=p) for p in ("end", "middle", "front")},
    **{
        f"csc-{p}": CoOpConfig(n_ctx=N_CTX, class_token_position=p, class_specific=True, n_classes=3)
        for p in ("end", "middle", "front")
    },  # fmt: skip
    "prograd": ProGradCoOpConfig(n_ctx=N_CTX, ctx_init=None),
    "kgcoop": KgCoOpConfig(n_ctx=N_CTX, ctx_init=None),
}


@pytest.mark.parametrize("case", list(COOP_CASES))
def test_coop_family_logits_match_the_hand_restatement(case):
    config = COOP_CASES[case]
    model = get_peft_model(tiny_siglip(), config)
    ctx = trained(randomise(model), "coop_ctx")
    clf, base = classifier(model), tiny_siglip()
    position = config.class_token_position
    template = {"end": "X X X X {}.", "front": "{} X X X X.", "middle": "X X {} X X."}[position]
    assert clf.prompts(clf.prompt_config()) == [template.format(n) for n in CLASSNAMES]
    rows = [coop_rows(position, ctx[c] if config.class_specific else ctx, w, base) for c, w in enumerate(CLASS_WORDS)]
    expected = sigmoid_logits(base, text_features(base, torch.stack(rows)), image_features(base, pixels()))
    with torch.no_grad():
        torch.testing.assert_close(clf(pixels()), expected, atol=1e-5, rtol=1e-5)


def test_cocoop_logits_match_the_hand_restatement():
    model = get_peft_model(tiny_siglip(), CoCoOpConfig().tokenize_with(word_tokenizer()))
    named = randomise(model, std=0.5)
    ctx, fc1w, fc1b, fc2w, fc2b = (
        trained(named, k) for k in ("coop_ctx", "fc1.default.weight", "fc1.default.bias", "fc2.default.weight",
                                    "fc2.default.bias")
    )  # fmt: skip
    clf, base = classifier(model), tiny_siglip()
    assert clf.prompts(clf.prompt_config()) == [f"X X X X {n}." for n in CLASSNAMES]  # ctx_init only initialises
    images = image_features(base, pixels())
    expected = []
    for v in images:  # pi(x) = fc2(relu(fc1(normalised image feature))), added to every context vector
        shift = F.relu(F.normalize(v, dim=-1) @ fc1w.T + fc1b) @ fc2w.T + fc2b
        rows = [coop_rows("end", ctx + shift, w, base) for w in CLASS_WORDS]
        expected.append(sigmoid_logits(base, text_features(base, torch.stack(rows)), v[None])[0])
    with torch.no_grad():
        torch.testing.assert_close(clf(pixels()), torch.stack(expected), atol=1e-5, rtol=1e-5)


# ---- deep text prompts: replace and prefix (DPL's layout), per-layer lengths; PromptSRC/IVLP text side ----------
@pytest.mark.parametrize("mode", ["replace", "prefix"])
def test_deep_text_prompts_match_the_hand_restatement(mode):
    model = get_peft_model(tiny_siglip(), DeepPromptConfig(mode=mode, text_lengths=[2, 3], vision_lengths=[0, 0]))
    named = randomise(model)
    prompts = {i: trained(named, f"text_model.encoder.layers.{i}.") for i in (0, 1)} if mode == "prefix" else None
    clf, base = classifier(model), tiny_siglip()
    texts = clf.prompts(clf.prompt_config())
    if mode == "replace":  # three slots (the longest text prompt); layer 0 replaces two of them, layer 1 all three
        assert texts == [f"X X X {n}." for n in CLASSNAMES]
        p0 = trained(named, "token_embedding")
        p1 = trained(named, "text_model.encoder.layers.1.")
        assert (p0.shape[0], p1.shape[0]) == (2, 3)
        rows = torch.stack([prompt_embeds(["x"] * 3 + w + ["."], base) for w in CLASS_WORDS])
        rows[:, :2] = p0
        text = text_features(base, rows, replace={1: p1})
    else:  # the text is the classifier's template; every token attends to the prompts as extra keys/values
        assert texts == [f"a photo of a {n}." for n in CLASSNAMES]
        assert (prompts[0].shape[0], prompts[1].shape[0]) == (2, 3)
        rows = torch.stack([prompt_embeds(["a", "photo", "of", "a"] + w + ["."], base) for w in CLASS_WORDS])
        text = text_features(base, rows, prefix=prompts)
    with torch.no_grad():
        torch.testing.assert_close(clf(pixels()), sigmoid_logits(base, text, image_features(base, pixels())),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def template_rows(base):
    return torch.stack([prompt_embeds(["a", "photo", "of", "a"] + w + ["."], base) for w in CLASS_WORDS])


def test_prefix_prompts_on_both_towers_match_the_hand_restatement():
    # DPL's fixed layout: prefix prompts add keys/values only, so the pooling head never sees vision prompts
    config = DeepPromptConfig(mode="prefix", text_lengths=[0, 2], vision_lengths=[1, 2])
    model = get_peft_model(tiny_siglip(), config)
    named = randomise(model)
    base = tiny_siglip()
    text = text_features(base, template_rows(base), prefix={1: trained(named, "text_model.encoder.layers.1.")})
    vision = {i: trained(named, f"vision_model.encoder.layers.{i}.") for i in (0, 1)}
    expected = sigmoid_logits(base, text, vision_features(base, pixels(), prefix=vision))
    with torch.no_grad():
        torch.testing.assert_close(classifier(model)(pixels()), expected, atol=1e-5, rtol=1e-5)


def test_dpl_search_with_one_hot_alpha_matches_the_prefix_restatement():
    # the supernet on SigLIP: bidirectional text (no causal mask), text padded to every position (the run-time
    # length rule of 77-token CLIP text does not apply); alpha one-hot on the longest candidate of every layer
    model = get_peft_model(tiny_siglip(), DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]))
    named = randomise(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "dpl_alpha" in name:
                p.copy_(torch.tensor([-1e4, 1e4]))
    named = {n: p.detach().clone() for n, p in model.named_parameters() if "dpl_prompts" in n}
    base = tiny_siglip()
    text = {i: trained(named, f"text_model.encoder.layers.{i}.") for i in (0, 1)}
    vision = {i: trained(named, f"vision_model.encoder.layers.{i}.") for i in (0, 1)}
    assert [p.shape[0] for p in (*text.values(), *vision.values())] == [2, 2, 1, 1]
    expected = sigmoid_logits(
        base, text_features(base, template_rows(base), prefix=text), vision_features(base, pixels(), prefix=vision)
    )
    with torch.no_grad():
        torch.testing.assert_close(classifier(model)(pixels()), expected, atol=1e-5, rtol=1e-5)


def test_promptsrc_text_side_matches_the_hand_restatement():
    config = PromptSRCConfig(text_lengths=[4, 4], vision_lengths=[0, 0]).tokenize_with(word_tokenizer())
    model = get_peft_model(tiny_siglip(), config)
    base = tiny_siglip()
    p0 = model.base_model.model.text_model.embeddings.token_embedding.prompts("default")
    weight = base.text_model.embeddings.token_embedding.weight
    assert torch.equal(p0.detach(), weight[[9, 10, 11, 9]])  # "a photo of a" in the word tokenizer
    named = randomise(model)
    clf = classifier(model)
    assert clf.prompts(clf.prompt_config()) == [f"a photo of a {n}." for n in CLASSNAMES]
    rows = torch.stack([prompt_embeds(["a", "photo", "of", "a"] + w + ["."], base) for w in CLASS_WORDS])
    rows[:, :4] = trained(named, "token_embedding")
    text = text_features(base, rows, replace={1: trained(named, "text_model.encoder.layers.1.")})
    with torch.no_grad():
        torch.testing.assert_close(clf(pixels()), sigmoid_logits(base, text, image_features(base, pixels())),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


# ---- every method: save/load bit-identical, disable_adapter() equals the untouched model -----------------------
ALL = {
    "coop-front": lambda: CoOpConfig(n_ctx=N_CTX, class_token_position="front"),
    "csc-middle": lambda: CoOpConfig(n_ctx=N_CTX, class_token_position="middle", class_specific=True, n_classes=3),
    "cocoop": lambda: CoCoOpConfig().tokenize_with(word_tokenizer()),
    "prograd": lambda: ProGradCoOpConfig(n_ctx=N_CTX, ctx_init=None),
    "kgcoop": lambda: KgCoOpConfig(n_ctx=N_CTX, ctx_init=None),
    "deep-replace": lambda: DeepPromptConfig(text_lengths=[2, 3], vision_lengths=[0, 0]),
    "deep-prefix": lambda: DeepPromptConfig(mode="prefix", text_lengths=[2, 3], vision_lengths=[1, 2]),
    "dpl-search": lambda: DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]),
    "promptsrc-text": lambda: PromptSRCConfig(text_lengths=[4, 4], vision_lengths=[0, 0]).tokenize_with(
        word_tokenizer()
    ),
    "maple": lambda: DeepPromptConfig(text_lengths=[2, 2], coupling="maple"),  # vision prompts dropped before the head
}


@pytest.mark.parametrize("method", list(ALL))
def test_save_load_bit_identical_and_disable_adapter_is_the_base(method, tmp_path):
    model = get_peft_model(tiny_siglip(), ALL[method]())
    randomise(model)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_siglip(), tmp_path)
    # frozen as peft leaves it: the pooling head's `nn.MultiheadAttention` picks another kernel when trainable
    base = tiny_siglip().requires_grad_(False)
    with torch.no_grad():
        before = classifier(model)(pixels())
        assert torch.equal(before, classifier(reloaded)(pixels()))
        with model.disable_adapter():
            off = classifier(model)(pixels())
        assert torch.equal(off, classifier(base)(pixels()))
        assert not torch.allclose(before, off)  # the adapter did change the logits


# ---- AutoPeftModel in a fresh process; the zero-shot pipelines ---------------------------------------------------
@pytest.mark.parametrize("method", ["deep-prefix", pytest.param("maple", marks=pytest.mark.slow)])
def test_auto_peft_model_in_a_fresh_process_gives_bit_identical_logits(method, tmp_path):
    tiny_siglip().save_pretrained(tmp_path / "base")
    model = get_peft_model(SiglipModel.from_pretrained(tmp_path / "base").eval(), ALL[method]())
    randomise(model)
    model.save_pretrained(tmp_path / "adapter")
    with torch.no_grad():
        expected = classifier(model)(pixels())
    torch.save({"pixels": pixels(), "logits": expected}, tmp_path / "expected.pt")
    assert_auto_peft_model_in_fresh_process(tmp_path / "adapter", tmp_path / "expected.pt", "SiglipModel", CLASSNAMES)


def processor():
    return SiglipImageProcessor(size={"height": 32, "width": 32})


@pytest.mark.parametrize("method", ["coop-front", "cocoop", "deep-prefix", "maple"])
def test_zero_shot_pipeline_matches_prompt_classifier(method):
    # SigLIP's pipeline scores are sigmoid(logits) per label (the bias included), not a softmax over the labels
    # 64 positions: the stock pipeline pads SigLIP text to 64 tokens (and drops `tokenizer_kwargs`)
    model = get_peft_model(tiny_siglip(max_len=64), ALL[method]()).eval()
    randomise(model)
    with torch.no_grad():
        logits = classifier(model)(processor()(images=pipeline_images(), return_tensors="pt")["pixel_values"])
    got = pipeline_scores(
        prompt_pipeline(model, word_tokenizer(), processor())(pipeline_images(), candidate_labels=CLASSNAMES),
        CLASSNAMES,
    )
    torch.testing.assert_close(got, torch.sigmoid(logits), atol=1e-6, rtol=1e-5)
    if method == "coop-front":  # the stock pipeline pads SigLIP text to max_length too: the placeholder template works
        stock = pipeline("zero-shot-image-classification", model=model, tokenizer=word_tokenizer(),
                         image_processor=processor())  # fmt: skip
        out = stock(pipeline_images(), candidate_labels=CLASSNAMES, hypothesis_template=hypothesis_template(model))
        torch.testing.assert_close(pipeline_scores(out, CLASSNAMES), torch.sigmoid(logits), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", [KgCoOpConfig, ProGradCoOpConfig])
def test_kgcoop_and_prograd_teachers_are_the_zero_shot_siglip_features(config):
    # the frozen teacher of both: "a photo of a {class}." through the untouched SigLIP, padded to every position
    model = get_peft_model(tiny_siglip(), config(n_ctx=N_CTX, ctx_init=None))
    randomise(model)
    base = tiny_siglip()
    expected = F.normalize(text_features(base, template_rows(base)), dim=-1)
    torch.testing.assert_close(classifier(model).zero_shot_text_features(), expected, atol=1e-5, rtol=1e-5)
    learned = coop_rows("end", trained(dict(model.named_parameters()), "coop_ctx").detach(), CLASS_WORDS[0], base)
    with torch.no_grad():
        ours = classifier(model).text_features()
    torch.testing.assert_close(
        ours[0], F.normalize(text_features(base, learned[None])[0], dim=-1), atol=1e-5, rtol=1e-5
    )
