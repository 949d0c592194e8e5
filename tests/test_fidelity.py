"""Fidelity to the released code (issue 12): each place where the library could differ from a method's released
implementation, checked against a hand re-statement of what the released code does.

The hand references assemble the token embeddings of each prompt themselves (SOS, context, class tokens, ".", EOS)
and run them through `tests.reference_text.text_feature`, an independent CLIP text tower; they never call the
library's prompt layout or slot lookup.
"""

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from PIL import Image as PILImage

from peft_vlprompt import CoCoOpConfig, CoOpConfig, KgCoOpConfig, ProGradCoOpConfig, PromptClassifier
from peft_vlprompt.data import make_transform
from peft_vlprompt.data.templates import TEMPLATES
from peft_vlprompt.training.presets import PresetContext, get_preset
from peft_vlprompt.tuners.deep_prompt import DeepPromptConfig
from peft_vlprompt.tuners.dpl import DPLSearchConfig
from tests.reference_text import normalize, text_feature
from tests.tiny import TEXT_WIDTH, pixels, tiny_clip, tokenizer

SOS, EOS, PERIOD = 49406, 49407, 269
X_RAY = [343, 268, 3077]  # "x-ray": its first token is the placeholder "x"
CLASSNAMES = ["x-ray", "cat", "x"]  # the last name *is* the placeholder word


def ids_of(text: str) -> list[int]:
    return tokenizer()(text, add_special_tokens=False)["input_ids"]


def embedding(model) -> torch.nn.Module:
    return model.base_model.model.text_model.embeddings.token_embedding


def hand_logits(ctx_rows, names, images, position="end", frozen=(), shift=None):
    """Released CoOp-family prompt by hand: [SOS] context/class arranged by `position` [frozen] [.] [EOS].

    `ctx_rows(c)` gives the (n_ctx, d) context of class c; `shift` (B, d) is CoCoOp's per-image meta-net output added to
    every context vector (then the text features are per image)."""
    base = tiny_clip()
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    with torch.no_grad():
        image = normalize(base.get_image_features(pixel_values=images).pooler_output)
    shifts = [None] if shift is None else list(shift)
    per_image = []
    for s in shifts:
        feats = []
        for c, name in enumerate(names):
            ctx = ctx_rows(c) if s is None else ctx_rows(c) + s
            half = ctx.shape[0] // 2
            name_emb = emb[ids_of(name.replace("_", " "))]
            parts = {
                "end": [ctx, emb[list(frozen)], name_emb],
                "front": [name_emb, ctx],
                "middle": [ctx[:half], name_emb, ctx[half:]],
            }[position]
            seq = torch.cat([emb[[SOS]], *parts, emb[[PERIOD, EOS]]])
            feats.append(text_feature(base, seq, eot_position=seq.shape[0] - 1))
        per_image.append(normalize(torch.stack(feats)))
    scale = base.logit_scale.exp().detach()
    if shift is None:
        return scale * image @ per_image[0].T
    return scale * torch.stack([image[b] @ per_image[b].T for b in range(len(shifts))])


def perturb(param: torch.Tensor, seed: int = 3) -> None:
    with torch.no_grad():  # move away from the init so the check sees trained-looking context
        param.add_(0.05 * torch.randn(param.shape, generator=torch.Generator().manual_seed(seed)))


# -- 1. one rule for class names -> prompt text ------------------------------------------------------------------
def test_dpl_search_prompts_write_class_names_with_spaces():
    """Released DPL search (like zero-shot and the training stage) formats `golden retriever`, not `golden_retriever`."""
    model = get_peft_model(tiny_clip(), DPLSearchConfig(text_candidates=[0, 1], vision_candidates=[0]))
    clf = PromptClassifier(model, tokenizer(), ["golden_retriever", "cat"])
    config = clf.prompt_config()
    ids = clf.tokenize(clf.prompts(config), config)
    golden = [SOS, 320, 1125, 539, 320, 3878, 28394, PERIOD, EOS]  # "a photo of a golden retriever."
    assert ids[0].tolist() == golden
    assert clf.prompts(None)[0] == "a photo of a golden retriever."  # zero-shot: the same rule
    assert CoOpConfig(n_ctx=2).prompt_texts(["golden_retriever"], "{}") == ["X X golden retriever."]


# -- 2. ProGrad's preset builds the released word-split init --------------------------------------------------------
@pytest.mark.parametrize(
    "dataset,learned,frozen",
    [
        ("oxford_pets", [320, 3877, 539, 3703, 267, 320, 1125, 539], [320]),  # "a type of pet , a photo of" | "a"
        ("oxford_flowers", None, None),
        ("fgvc_aircraft", None, None),
        ("food101", None, None),
    ],
)
def test_prograd_preset_uses_the_released_word_split(dataset, learned, frozen):
    template = TEMPLATES["prograd"][dataset]
    preset = get_preset("prograd", PresetContext("few_shot", 16, dataset, template))
    config = ProGradCoOpConfig(teacher_template=template, **preset.adapter)
    phrase = template[: -len(" {}.")]
    words = phrase.split(" ")
    phrase_ids = ids_of(phrase)
    # released ProGrad: k = word count; context = 16 - k zeros + the first k phrase tokens; the rest stays frozen
    assert learned is None or phrase_ids[: len(words)] == learned and phrase_ids[len(words) :] == frozen
    assert config.n_ctx == 16 and len(phrase_ids) == len(words) + 1  # each phrase has one two-token word ("pet,")
    model = get_peft_model(tiny_clip(), config)
    emb = tiny_clip().text_model.embeddings.token_embedding.weight.detach()
    ctx = embedding(model).coop_ctx["default"].detach()
    k = len(words)
    assert torch.equal(ctx[: 16 - k], torch.zeros(16 - k, TEXT_WIDTH))
    assert torch.equal(ctx[16 - k :], emb[phrase_ids[:k]])
    # the text tower sees [SOS] ctx(16) [frozen last phrase token] [class] [.] [EOS]
    clf = PromptClassifier(model, tokenizer(), ["abyssinian"], template=template)
    ids = clf.tokenize(clf.prompts(config), config)
    with torch.no_grad():
        embeds = embedding(model)(ids)[0]
    expected = torch.cat([emb[[SOS]], ctx, emb[phrase_ids[k:] + ids_of("abyssinian") + [PERIOD, EOS]]])
    torch.testing.assert_close(embeds, expected, rtol=0, atol=0)
    token_variant = ProGradCoOpConfig(teacher_template=template, **(preset.adapter | {"ctx_init_split": "tokens"}))
    assert (token_variant.n_init, token_variant.frozen_init_token_ids) == (len(phrase_ids), [])


# -- 3. class-specific context with a word init --------------------------------------------------------------------
def test_class_specific_with_word_init_shares_one_context_by_default_and_copies_per_class_on_request(caplog):
    names = ["cat", "dog", "sea lion"]
    emb = tiny_clip().text_model.embeddings.token_embedding.weight.detach()
    words = emb[[320, 1125, 539, 320]]
    images = pixels()
    with caplog.at_level("WARNING"):
        shared = CoOpConfig(ctx_init="a photo of a", class_specific=True, n_classes=3)
    assert "one context is shared by all classes" in caplog.text  # never silent
    per_class = CoOpConfig(ctx_init="a photo of a", class_specific=True, n_classes=3, class_specific_init="per_class")
    results = {}
    for mode, config in (("shared", shared), ("per_class", per_class)):
        model = get_peft_model(tiny_clip(), config)
        ctx = embedding(model).coop_ctx["default"]
        # released CoOp (CSC ignored when CTX_INIT is set): one (n_ctx, d) tensor; per_class: (n_classes, n_ctx, d)
        assert ctx.shape == ((4, TEXT_WIDTH) if mode == "shared" else (3, 4, TEXT_WIDTH))
        assert torch.equal(ctx.detach().reshape(-1, 4, TEXT_WIDTH), words.expand(ctx.numel() // words.numel(), -1, -1))
        clf = PromptClassifier(model, tokenizer(), names)
        clf.train()
        loss = -clf(images)[:, 0].sum()  # only class 0's prompt gets a gradient
        loss.backward()
        with torch.no_grad():
            ctx.sub_(ctx.grad)
        results[mode] = ctx.detach().clone()
        clf.eval()
        trained = results[mode]
        rows = (lambda c, t=trained: t) if mode == "shared" else (lambda c, t=trained: t[c])
        torch.testing.assert_close(clf(images), hand_logits(rows, names, images), atol=1e-5, rtol=0)
    assert not torch.equal(results["shared"], words)
    assert not torch.equal(results["per_class"][0], words)  # class 0 moved, the others kept the words
    assert torch.equal(results["per_class"][1], words) and torch.equal(results["per_class"][2], words)


# -- 4 (and issue 11 item 2). `ctx_init` with a multi-token word; n_ctx is never silently replaced ----------------
def test_ctx_init_split_words_learns_one_vector_per_word_and_keeps_the_rest_frozen():
    phrase = "a photo of an axolotl"  # 5 words, 8 BPE tokens ("axolotl" is 4)
    phrase_ids = [320, 1125, 539, 550, 3165, 78, 5132, 331]
    emb = tiny_clip().text_model.embeddings.token_embedding.weight.detach()
    images = pixels()
    words = CoOpConfig(ctx_init=phrase)
    tokens = CoOpConfig(ctx_init=phrase, ctx_init_split="tokens")
    assert (words.ctx_init_split, words.n_ctx, tokens.n_ctx) == ("words", 5, 8)  # released: len(split(" ")) = 5
    for config, n_learned in ((words, 5), (tokens, 8)):
        model = get_peft_model(tiny_clip(), config)
        ctx = embedding(model).coop_ctx["default"]
        assert torch.equal(ctx.detach(), emb[phrase_ids[:n_learned]])
        perturb(ctx)
        logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
        frozen = phrase_ids[n_learned:]
        trained = ctx.detach()
        expected = hand_logits(lambda c, t=trained: t, CLASSNAMES, images, frozen=frozen)
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("cls", [CoOpConfig, CoCoOpConfig, KgCoOpConfig])
def test_explicit_n_ctx_that_conflicts_with_ctx_init_is_an_error(cls):
    with pytest.raises(ValueError, match=re.escape("`n_ctx`=8 conflicts with `ctx_init`='a photo of a'")):
        cls(n_ctx=8, ctx_init="a photo of a")
    config = cls(ctx_init="a photo of a")  # not given: derived as released, and saved as used
    assert config.n_ctx == 4 and config.to_dict()["n_ctx"] == 4
    assert cls(n_ctx=4, ctx_init="a photo of a").n_ctx == 4
    assert cls(n_ctx=8, ctx_init=None).n_ctx == 8  # no init: the value is honoured
    padded = cls(n_ctx=8, ctx_init="a photo of a", pad_ctx_init=True)
    assert padded.n_ctx == 8 and padded.to_dict()["n_ctx"] == 8


def test_words_split_with_a_frozen_rest_needs_the_class_at_the_end():
    with pytest.raises(ValueError, match="needs `class_token_position='end'`, got 'front'"):
        CoOpConfig(ctx_init="a photo of an axolotl", class_token_position="front")
    assert (
        CoOpConfig(ctx_init="a photo of an axolotl", ctx_init_split="tokens", class_token_position="front").n_ctx == 8
    )


# -- 5. test-time center crop as torchvision's CenterCrop ------------------------------------------------------------
class _Processor:
    size = {"shortest_edge": 224}
    crop_size = {"height": 224, "width": 224}
    image_mean = [0.5, 0.5, 0.5]
    image_std = [0.25, 0.25, 0.25]
    resample = PILImage.BICUBIC
    rescale_factor = 1 / 255


@pytest.mark.parametrize(
    "width,height,resized_width,left",
    [
        (436, 365, 267, 22),  # int(224 * 436 / 365) = 267: margin 43, round(21.5) = 22 (flooring gives 21)
        (448, 365, 274, 25),  # margin 50: even, 25 either way
    ],
)
def test_center_crop_is_placed_like_torchvision(width, height, resized_width, left):
    arr = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = PILImage.fromarray(arr)
    resized = np.asarray(image.resize((resized_width, 224), resample=PILImage.BICUBIC), dtype=np.float32)
    crop = (resized[:, left : left + 224] / 255 - 0.5) / 0.25  # by hand: rows 0..223, columns left..left+223
    expected = torch.from_numpy(crop).permute(2, 0, 1)
    got = make_transform(_Processor(), train=False)({"image": [image], "label": [0]})["pixel_values"][0]
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    # the transformers-processor emulation floors: one column to the left when the margin is odd
    floor_left = (resized_width - 224) // 2
    floor = make_transform(_Processor(), train=False, center_crop="processor")({"image": [image], "label": [0]})
    by_hand = torch.from_numpy((resized[:, floor_left : floor_left + 224] / 255 - 0.5) / 0.25).permute(2, 0, 1)
    torch.testing.assert_close(floor["pixel_values"][0], by_hand, rtol=0, atol=1e-5)
    assert (floor_left != left) == (width == 436)


# -- 7. class names containing the placeholder word ------------------------------------------------------------------
@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_accepts_class_names_with_the_placeholder_token(position):
    assert ids_of("x-ray")[0] == ids_of("X")[0] == X_RAY[0]
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4, class_token_position=position))
    ctx = embedding(model).coop_ctx["default"]
    perturb(ctx)
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    torch.testing.assert_close(
        logits, hand_logits(lambda c: ctx.detach(), CLASSNAMES, images, position), atol=1e-5, rtol=0
    )


@pytest.mark.parametrize("config", [ProGradCoOpConfig(), KgCoOpConfig()], ids=["prograd", "kgcoop"])
def test_prograd_and_kgcoop_accept_class_names_with_the_placeholder_token(config):
    model = get_peft_model(tiny_clip(), config)
    ctx = embedding(model).coop_ctx["default"]
    perturb(ctx)
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    torch.testing.assert_close(logits, hand_logits(lambda c: ctx.detach(), CLASSNAMES, images), atol=1e-5, rtol=0)


def test_cocoop_accepts_class_names_with_the_placeholder_token():
    model = get_peft_model(tiny_clip(), CoCoOpConfig())
    layer = embedding(model)
    ctx = layer.coop_ctx["default"]
    perturb(ctx)
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    fc1, fc2 = layer.cocoop_meta_fc1["default"], layer.cocoop_meta_fc2["default"]
    with torch.no_grad():
        feats = normalize(tiny_clip().get_image_features(pixel_values=images).pooler_output)
        shift = F.relu(feats @ fc1.weight.T + fc1.bias) @ fc2.weight.T + fc2.bias  # CoCoOp's meta-net by hand
    expected = hand_logits(lambda c: ctx.detach(), CLASSNAMES, images, shift=shift)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_deep_prompts_accept_class_names_with_the_placeholder_token():
    model = get_peft_model(tiny_clip(), DeepPromptConfig(text_lengths=[2, 0]))  # input context only: 2 slots
    prompts = embedding(model).deep_prompt["default"]
    perturb(prompts)
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    torch.testing.assert_close(logits, hand_logits(lambda c: prompts.detach(), CLASSNAMES, images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("stage", ["search", "train"])
def test_dpl_accepts_class_names_with_the_placeholder_token(stage):
    if stage == "search":
        config = DPLSearchConfig(text_candidates=[0, 1], vision_candidates=[0, 1])
    else:
        config = DeepPromptConfig(mode="prefix", text_lengths=[1, 2], vision_lengths=[2, 0])
    model = get_peft_model(tiny_clip(), config)
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()
    ids = clf.tokenize(clf.prompts(config), config)
    assert ids[0, : 5 + len(X_RAY) + 2].tolist() == [SOS, 320, 1125, 539, 320, *X_RAY, PERIOD, EOS]
    assert torch.isfinite(clf(pixels())).all()


# -- 6. DPL's training-stage text input: the 60-template token-embedding ensemble -------------------------------
def test_dpl_ensemble_text_input_matches_the_released_average():
    """Released CTX_INIT "ensemble": per class, `clip.tokenize` every template (SOS ... EOT, zero padded to 77),
    average the token embeddings position-wise, run the text tower, pool at the EOT of the last template."""
    from peft_vlprompt.data.templates import IMAGENET_TEMPLATES_60

    names = ["golden_retriever", "x-ray", "cat"]
    config = DeepPromptConfig(mode="prefix", vision_lengths=[1, 0], text_input="ensemble")
    model = get_peft_model(tiny_clip(), config)
    clf = PromptClassifier(model, tokenizer(), names).eval()
    base = tiny_clip()
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    hand = []
    for name in names:
        rows = []
        for template in IMAGENET_TEMPLATES_60:
            ids = [SOS, *ids_of(template.format(name.replace("_", " "))), EOS]
            rows.append(ids + [0] * (77 - len(ids)))
        tokens = torch.tensor(rows)  # (60, 77), as clip.tokenize pads
        average = emb[tokens].mean(0)
        eot = int(tokens[-1].argmax())  # the EOT (largest id) of the last template
        hand.append(text_feature(base, average, eot_position=eot))
    torch.testing.assert_close(clf.text_features(), normalize(torch.stack(hand)), atol=1e-5, rtol=0)
    assert clf.prompts(config)[0] == "itap of the golden retriever."  # the last of the 60 templates


def test_dpl_ensemble_is_the_default_of_the_search_flow_and_an_explicit_option():
    from peft_vlprompt.dpl.run import DPLRunArguments, parse_args

    assert DPLRunArguments().subnet_text_input == "ensemble"
    assert parse_args(["--subnet_text_input", "template"])[0].subnet_text_input == "template"
    with pytest.raises(ValueError, match="`subnet_text_input` must be one of"):
        DPLRunArguments(subnet_text_input="mean")
    assert DeepPromptConfig(mode="prefix", vision_lengths=[1, 0]).text_input == "template"
    with pytest.raises(ValueError, match="`text_input='ensemble'` replaces the text template"):
        DeepPromptConfig(text_lengths=[2, 0], text_input="ensemble")


def test_configs_saved_before_ctx_init_split_load_with_their_token_split(tmp_path):
    """An adapter saved when `ctx_init` was counted in BPE tokens (no `ctx_init_split` in its file) keeps its prompts."""
    import json

    from peft import PeftModel

    config = ProGradCoOpConfig.paper_init("a type of pet, a photo of a {}.", split_by_words=False)
    model = get_peft_model(tiny_clip(), config)
    perturb(embedding(model).coop_ctx["default"])
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "adapter_config.json").read_text())
    assert saved["ctx_init_split"] == "tokens"
    del saved["ctx_init_split"]  # as written before the field existed
    (tmp_path / "adapter_config.json").write_text(json.dumps(saved))
    assert ProGradCoOpConfig.from_pretrained(tmp_path).ctx_init_split == "tokens"
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    assert reloaded.peft_config["default"].frozen_init_token_ids == []
    images = pixels()
    before = PromptClassifier(model, tokenizer(), ["cat", "dog"]).eval()(images)
    torch.testing.assert_close(PromptClassifier(reloaded, tokenizer(), ["cat", "dog"]).eval()(images), before)
