"""The method x family matrix on MetaCLIP 2: every method on a tiny random `MetaClip2Model` (offline).

MetaCLIP 2's module tree is CLIP's, so the hand re-statements are `tests/reference_clip.py` /
`tests/reference_text.py` (plain tensor ops on an untouched copy of the weights); what is family-specific is the text
side: the XLM-V layout of `tests/tiny_metaclip2.py` (`<s>` = 0, `<pad>` = 1, `</s>` = 2, words from 4) and pooling
at the FIRST `</s>` (found here by scanning the ids; CLIP's legacy rule for `eos_token_id == 2` would take the
largest id, a word). Per method: logits against the re-statement, save/load bit-identical, `disable_adapter()`
equal to the untouched model; then ProGrad's projected step and KgCoOp's term by hand, a DPL search step by hand,
`AutoPeftModel` in a fresh process and the zero-shot pipelines.
"""

import copy
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model, get_peft_model_state_dict
from transformers import CLIPImageProcessor, MetaClip2Model, pipeline

from peft_vlprompt import (
    CoCoOpConfig,
    CoOpConfig,
    DeepPromptConfig,
    DPLSearchConfig,
    KgCoOpConfig,
    ProGradCoOpConfig,
    PromptClassifier,
    losses,
    make_prograd_optimizer,
)
from peft_vlprompt.hub import hypothesis_template, prompt_pipeline
from peft_vlprompt.tuners.deep_prompt import PromptSRCConfig
from peft_vlprompt.tuners.restore import RestoreAdapterConfig
from tests import reference_clip as ref
from tests.reference_text import text_feature
from tests.test_dpl_search import hand_search_step
from tests.tiny import pipeline_images, pipeline_scores, pixels
from tests.tiny_metaclip2 import BOS, EOS, PAD, SPECIALS, WORDS, first_eos, tiny_metaclip2, xlmv_like_tokenizer

CLASSNAMES = ["cat", "golden retriever", "sea lion"]
ID = {w: i for i, w in enumerate(SPECIALS + WORDS)}  # the tokenizer's vocabulary, read by hand
CLASS_IDS = [[ID["cat"]], [ID["golden"], ID["retriever"]], [ID["sea"], ID["lion"]]]
TEMPLATE = "a photo of a {}."
N_CTX = 4
_BASE = tiny_metaclip2(layers=3)  # built once; every test injects into a copy


def base():
    return copy.deepcopy(_BASE)


def tok():
    return xlmv_like_tokenizer()


def classifier(model, template=TEMPLATE):
    return PromptClassifier(model, tok(), CLASSNAMES, template=template).eval()


def randomise(model, seed=3, std=0.5):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            p.copy_(torch.randn(p.shape, generator=gen) * std)


def image_features(pix, **prompts):
    return ref.vision_forward(_BASE, pix, **prompts)[0]


def text_of(rows: list[torch.Tensor], ids: list[list[int]]) -> torch.Tensor:
    """Projected features of prompts given as token embeddings (L, d), pooled at each id list's first `</s>`."""
    longest = max(map(len, ids))
    eos = first_eos(torch.tensor([i + [PAD] * (longest - len(i)) for i in ids]))
    return torch.stack([text_feature(_BASE, r, eot_position=int(e)) for r, e in zip(rows, eos)])


def logits(text, image):
    return ref.logits(_BASE, text, image)


# ---- CoOp family: CoOp (3 positions x unified/class-specific), ProGrad-CoOp, KgCoOp, CoCoOp ---------------------
def coop_layout(position: str, name: list[int]) -> tuple[list[int], list[int]]:
    """(ids of the prompt, positions of the context slots): `<s>`, the layout with "X" slots, ".", `</s>`."""
    x, half = ID["X"], N_CTX // 2
    body = {"end": [x] * N_CTX + name, "front": name + [x] * N_CTX,
            "middle": [x] * half + name + [x] * (N_CTX - half)}[position]  # fmt: skip
    slots = {"end": range(N_CTX), "front": range(len(name), len(name) + N_CTX),
             "middle": [*range(half), *range(half + len(name), len(name) + N_CTX)]}[position]  # fmt: skip
    return [BOS, *body, ID["."], EOS], [1 + s for s in slots]


def coop_rows(position, ctx, name):
    ids, slots = coop_layout(position, name)
    rows = _BASE.text_model.embeddings.token_embedding.weight.detach()[ids].clone()
    rows[slots] = ctx
    return rows, ids


COOP_CASES = {
    **{f"coop-{p}": lambda p=p: CoOpConfig(n_ctx=N_CTX, class_token_position=p) for p in ("end", "middle", "front")},
    **{
        f"csc-{p}": lambda p=p: CoOpConfig(n_ctx=N_CTX, class_token_position=p, class_specific=True, n_classes=3)
        for p in ("end", "middle", "front")
    },
    "prograd": lambda: ProGradCoOpConfig(n_ctx=N_CTX, ctx_init=None),
    "kgcoop": lambda: KgCoOpConfig(n_ctx=N_CTX, ctx_init=None),
}


def context(model):
    (ctx,) = [p for n, p in model.named_parameters() if "coop_ctx" in n]
    return ctx


@pytest.mark.parametrize("case", list(COOP_CASES))
def test_coop_family_logits_match_the_hand_restatement(case):
    config = COOP_CASES[case]()
    model = get_peft_model(base(), config)
    randomise(model)
    ctx = context(model).detach()
    clf = classifier(model)
    position = config.class_token_position
    written = {"end": "X X X X {}.", "front": "{} X X X X.", "middle": "X X {} X X."}[position]
    assert clf.prompts(clf.prompt_config()) == [written.format(n) for n in CLASSNAMES]
    rows, ids = zip(*[coop_rows(position, ctx[c] if config.class_specific else ctx, name)
                      for c, name in enumerate(CLASS_IDS)])  # fmt: skip
    expected = logits(text_of(list(rows), list(ids)), image_features(pixels()))
    with torch.no_grad():
        torch.testing.assert_close(clf(pixels()), expected, atol=1e-5, rtol=1e-5)


def test_cocoop_logits_match_the_hand_restatement():
    model = get_peft_model(base(), CoCoOpConfig(n_ctx=N_CTX).tokenize_with(tok()))
    randomise(model)
    named = {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}
    get = lambda key: next(v for n, v in named.items() if key in n)  # noqa: E731
    ctx, w1, b1, w2, b2 = (get(k) for k in ("coop_ctx", "fc1.default.weight", "fc1.default.bias",
                                            "fc2.default.weight", "fc2.default.bias"))  # fmt: skip
    expected = []
    for v in image_features(pixels()):  # pi(x) = fc2(relu(fc1(normalised image feature))), added to every ctx vector
        shift = F.relu(F.normalize(v, dim=-1) @ w1.T + b1) @ w2.T + b2
        rows, ids = zip(*[coop_rows("end", ctx + shift, name) for name in CLASS_IDS])
        expected.append(logits(text_of(list(rows), list(ids)), v[None])[0])
    with torch.no_grad():
        torch.testing.assert_close(classifier(model)(pixels()), torch.stack(expected), atol=1e-5, rtol=1e-5)


def template_ids():
    """'a photo of a {class}.' in the vocabulary, written by hand."""
    return [[BOS, ID["a"], ID["photo"], ID["of"], ID["a"], *name, ID["."], EOS] for name in CLASS_IDS]


def zero_shot_text():
    emb = _BASE.text_model.embeddings.token_embedding.weight.detach()
    ids = template_ids()
    return F.normalize(text_of([emb[i] for i in ids], ids), dim=-1)


def soft_cross_entropy(student, teacher, T):
    return -(F.softmax(teacher / T, -1) * F.log_softmax(student / T, -1)).sum(-1).mean() * T * T


def test_prograd_teacher_loss_and_projected_step_match_the_hand_restatement():
    config = ProGradCoOpConfig(n_ctx=N_CTX, ctx_init=None, lambda_=0.9, temperature=2.0)
    model = get_peft_model(base(), config)
    randomise(model)
    ctx = context(model)
    clf = PromptClassifier(model, tok(), CLASSNAMES, template=config.teacher_template).train()
    images = pixels(batch=4)
    # the frozen teacher: "a photo of a {class}." through the untouched tower, pooled at its first `</s>`
    torch.testing.assert_close(clf.zero_shot_text_features(), zero_shot_text(), atol=1e-5, rtol=1e-5)
    image = clf.image_features(images)
    torch.testing.assert_close(image, F.normalize(image_features(images), dim=-1), atol=1e-5, rtol=1e-5)
    teacher = _BASE.logit_scale.exp().detach() * image @ zero_shot_text().T
    torch.testing.assert_close(losses.teacher_logits(image, clf.zero_shot_text_features(), clf.clip.logit_scale),
                               teacher, atol=1e-5, rtol=1e-5)  # fmt: skip
    labels = teacher.argmin(-1)  # the task pulls away from the teacher: the two directions conflict
    student = clf.logits(image, clf.text_features())
    general = losses.prograd_general_loss(student, teacher, T=2.0)["prograd_kl"]
    torch.testing.assert_close(general, soft_cross_entropy(student, teacher, 2.0), atol=1e-6, rtol=1e-6)
    # G_d - lambda * (G_d . g) g when G_d . G_g < 0 (g = G_g / |G_g|), then plain SGD
    g_d = torch.autograd.grad(F.cross_entropy(student, labels), ctx, retain_graph=True)[0].flatten()
    g_g = torch.autograd.grad(soft_cross_entropy(student, teacher, 2.0), ctx)[0].flatten()
    assert g_d @ g_g < 0
    unit = g_g / g_g.norm()
    expected = ctx.detach() - 0.05 * (g_d - 0.9 * (g_d @ unit) * unit).view_as(ctx)

    optimizer = make_prograd_optimizer(torch.optim.SGD([ctx], lr=0.05), config)
    student = clf.logits(image, clf.text_features())
    optimizer.add_general_direction(losses.prograd_general_loss(student, teacher, T=2.0)["prograd_kl"])
    F.cross_entropy(student, labels).backward()
    optimizer.step()
    assert optimizer.last_stats["prograd/projected_fraction"] == 1.0
    torch.testing.assert_close(ctx.detach(), expected, atol=1e-6, rtol=0)


def test_kgcoop_term_matches_the_hand_restatement():
    config = KgCoOpConfig(n_ctx=N_CTX, ctx_init=None, kg_weight=4.0)
    model = get_peft_model(base(), config)
    randomise(model)
    clf = PromptClassifier(model, tok(), CLASSNAMES, template=config.teacher_template).train()
    rows, ids = zip(*[coop_rows("end", context(model).detach(), name) for name in CLASS_IDS])
    learned = F.normalize(text_of(list(rows), list(ids)), dim=-1)
    term = losses.kgcoop_loss(clf.text_features(), clf.zero_shot_text_features(), weight=4.0)["kgcoop"]
    torch.testing.assert_close(term.detach(), 4.0 * (1 - (learned * zero_shot_text()).sum(-1).mean()),
                               atol=1e-5, rtol=0)  # fmt: skip
    assert torch.autograd.grad(term, context(model))[0].abs().sum() > 0


# ---- deep prompts (replace / prefix, per-layer lengths, MaPLe coupling), PromptSRC, RESTORE, DPL -----------------
DEEP_CASES = {
    "replace": lambda: DeepPromptConfig(text_lengths=[2, 3, 1], vision_lengths=[3, 0, 2]),
    "prefix": lambda: DeepPromptConfig(mode="prefix", text_lengths=[2, 0, 3], vision_lengths=[0, 1, 2]),
    "maple": lambda: DeepPromptConfig(text_lengths=[2, 3, 1], vision_lengths=[2, 0, 1], coupling="maple"),
    "promptsrc": lambda: PromptSRCConfig(text_lengths=[4, 4, 0], vision_lengths=[4, 4, 0]).tokenize_with(tok()),
    "dpl-train": lambda: DeepPromptConfig(
        mode="prefix", text_lengths=[1, 2, 0], vision_lengths=[2, 0, 1], text_template=TEMPLATE
    ),
}


def saved_prompts(model):
    """{"text"|"vision": {"replace"|"prefix": {index: (n, w)}}} from the saved adapter state (coupled vision prompts
    projected by hand: P_v = P_t Wᵀ + b)."""
    out = {t: {"replace": {}, "prefix": {}} for t in ("text", "vision")}
    maps = {}
    for key, value in get_peft_model_state_dict(model).items():
        tower = "text" if "text_model" in key else "vision"
        index = int(key.split("layers.")[1].split(".")[0]) if "layers." in key else 0
        kind = "prefix" if ".self_attn." in key else "replace"
        if key.endswith("deep_prompt"):
            out[tower][kind][index] = value.detach()
        elif key.endswith(("deep_proj.weight", "deep_proj.bias")):
            maps.setdefault((kind, index), {})[key.rsplit(".", 1)[1]] = value.detach()
    for (kind, index), wb in maps.items():
        out["vision"][kind][index] = out["text"][kind][index] @ wb["weight"].T + wb["bias"]
    return out


@pytest.mark.parametrize("case", list(DEEP_CASES))
def test_deep_prompt_logits_match_the_hand_restatement(case):
    config = DEEP_CASES[case]()
    model = get_peft_model(base(), config)
    if case == "promptsrc":  # the input context starts as "a photo of a" in the model's own tokenizer
        p0 = get_peft_model_state_dict(model)["base_model.model.text_model.embeddings.token_embedding.deep_prompt"]
        assert torch.equal(p0, _BASE.text_model.embeddings.token_embedding.weight[[4, 5, 6, 4]])
    randomise(model)
    clf = classifier(model)
    texts = clf.prompts(clf.prompt_config())
    slots = max(config.text_lengths) if config.mode == "replace" else 0
    prefix = "a photo of a" if case == "promptsrc" else " ".join(["X"] * slots)
    assert texts == ([f"{prefix} {n}." for n in CLASSNAMES] if slots else [TEMPLATE.format(n) for n in CLASSNAMES])
    ids = tok()(texts, padding=True, return_tensors="pt")["input_ids"]
    prompts = saved_prompts(model)
    with torch.no_grad():
        text, _ = ref.text_forward(_BASE, ids, **prompts["text"])  # pools at the first `</s>` (eos_token_id = 2)
        expected = logits(text, image_features(pixels(), **prompts["vision"]))
        torch.testing.assert_close(clf(pixels()), expected, atol=1e-5, rtol=1e-5)
    row = ids.tolist()[0]
    assert row.index(EOS) != row.index(max(row))  # CLIP's legacy argmax rule would pool at another position


def test_restore_logits_match_the_hand_restatement():
    model = get_peft_model(base(), RestoreAdapterConfig(text_lengths=[2, 3, 0]).tokenize_with(tok()))
    randomise(model, std=0.3)
    with torch.no_grad():  # non-default ratios, so r really enters
        model.get_base_model().text_projection.restore_ratio["default"].fill_(0.7)
        model.get_base_model().visual_projection.restore_ratio["default"].fill_(0.4)
    sd = {k.removeprefix("base_model.model."): v.detach() for k, v in get_peft_model_state_dict(model).items()}

    def surgery(f, name):  # f + r * (W2 QuickGELU(W1 LN(f) + b1) + b2)
        h = F.layer_norm(f, f.shape[-1:], sd[f"{name}.restore_norm.weight"], sd[f"{name}.restore_norm.bias"], 1e-5)
        h = h @ sd[f"{name}.restore_fc1.weight"].T + sd[f"{name}.restore_fc1.bias"]
        h = h * torch.sigmoid(1.702 * h)
        return f + sd[f"{name}.restore_ratio"] * (
            h @ sd[f"{name}.restore_fc2.weight"].T + sd[f"{name}.restore_fc2.bias"]
        )

    prompts = saved_prompts(model)
    texts = model.peft_config["default"].prompt_texts(CLASSNAMES, "{}")
    ids = tok()(texts, padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text, _ = ref.text_forward(_BASE, ids, **prompts["text"])
        image = image_features(pixels(), **prompts["vision"])
        expected = logits(surgery(text, "text_projection"), surgery(image, "visual_projection"))
        torch.testing.assert_close(classifier(model)(pixels()), expected, atol=1e-5, rtol=1e-5)


def test_dpl_supernet_with_one_hot_alpha_matches_the_prefix_restatement():
    model = get_peft_model(base(), DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]))
    randomise(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "dpl_alpha" in name:
                p.copy_(torch.tensor([-1e4, 1e4]))  # the longest candidate in every layer
    prompts = {"text": {}, "vision": {}}
    for name, p in model.named_parameters():
        if "dpl_prompts" in name:
            tower = "text" if "text_model" in name else "vision"
            prompts[tower][int(name.split("layers.")[1].split(".")[0])] = p.detach().reshape(-1, p.shape[-1])
    assert [p.shape[0] for t in ("text", "vision") for p in prompts[t].values()] == [2, 2, 2, 1, 1, 1]
    ids = tok()([TEMPLATE.format(n) for n in CLASSNAMES], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        text, _ = ref.text_forward(_BASE, ids, prefix=prompts["text"])
        expected = logits(text, image_features(pixels(), prefix=prompts["vision"]))
        torch.testing.assert_close(classifier(model)(pixels()), expected, atol=1e-5, rtol=1e-5)


class Images(torch.utils.data.Dataset):
    """Fixed random images; keys `(epoch, index)` (the search's keyed training set) or a plain index."""

    def __init__(self, n: int, seed: int):
        self.images = torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))

    def __len__(self):
        return len(self.images)

    def __getitem__(self, key):
        i = key[1] if isinstance(key, tuple) else key
        return {"pixel_values": self.images[i], "labels": i % len(CLASSNAMES)}


def test_dpl_search_steps_match_the_hand_bilevel_update_and_export_a_metaclip2_adapter(tmp_path):
    from peft_vlprompt.data import collate
    from peft_vlprompt.dpl import DPLSearch, DPLSearchArguments, found_config, pass_order
    from peft_vlprompt.dpl.batches import TRAIN_STREAM, VAL_STREAM
    from peft_vlprompt.tuners.dpl import alpha_parameters, prompt_parameters

    config = dict(text_candidates=[0, 1, 2], vision_candidates=[0, 2], prompt_init="normal", init_std=0.3)

    def supernet():
        torch.manual_seed(0)  # the adapter's initialisation
        model = get_peft_model(base(), DPLSearchConfig(**config))
        return model, PromptClassifier(model, tok(), CLASSNAMES)

    model, clf = supernet()
    args = DPLSearchArguments(num_epochs=2, batch_size=2, lr=0.05, alpha_lr=0.05, log_every=1000, warmup_epochs=0,
                              momentum=0.9, weight_decay=0.01, max_steps=1)  # fmt: skip
    search = DPLSearch(model, clf, Images(6, 1), Images(3, 2), args, tmp_path, keyed_train=True)
    hand, hand_clf = supernet()
    alphas, prompts = alpha_parameters(hand), prompt_parameters(hand)
    train = collate([Images(6, 1)[(0, i)] for i in pass_order(6, 1, TRAIN_STREAM, 0)[:2]])
    val = collate([Images(3, 2)[i] for i in pass_order(3, 1, VAL_STREAM, 0)[:2]])
    hand_search_step(hand_clf, alphas, prompts, train, val)  # the search's lr 0.05 and weight decay 0.01
    search.run()
    for got, want in zip(alpha_parameters(search.model) + prompt_parameters(search.model), alphas + prompts):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)
    # the export trains on MetaCLIP 2 (its template ensemble needs the model's tokenizer: the family ships none)
    found = found_config(search.model).tokenize_with(tok())
    trained = get_peft_model(base(), found)
    with torch.no_grad():
        assert torch.isfinite(classifier(trained)(pixels())).all()


# ---- every method: save/load bit-identical, disable_adapter() equals the untouched model -------------------------
ALL = {
    **{case: make for case, make in COOP_CASES.items() if case in ("coop-front", "csc-middle", "prograd", "kgcoop")},
    "cocoop": lambda: CoCoOpConfig(n_ctx=N_CTX).tokenize_with(tok()),
    **DEEP_CASES,
    "restore": lambda: RestoreAdapterConfig(text_lengths=[2, 3, 0]).tokenize_with(tok()),
    "dpl-search": lambda: DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]),
    "dpl-ensemble": lambda: DeepPromptConfig(mode="prefix", vision_lengths=[1, 0, 0], text_input="ensemble"),
}


@pytest.mark.parametrize("method", list(ALL))
def test_save_load_bit_identical_and_disable_adapter_is_the_base(method, tmp_path):
    config = ALL[method]()
    if method == "dpl-ensemble":  # the templates' words are outside the tiny vocabulary: `<unk>`, still exact
        config.tokenize_with(tok())
    model = get_peft_model(base(), config)
    randomise(model)
    model.save_pretrained(tmp_path)
    loaded_config = None
    if method == "dpl-ensemble":
        loaded_config = PeftConfig.from_pretrained(tmp_path).tokenize_with(tok())
    reloaded = PeftModel.from_pretrained(base(), tmp_path, config=loaded_config)
    with torch.no_grad():
        before = classifier(model)(pixels())
        assert torch.equal(before, classifier(reloaded)(pixels()))
        with model.disable_adapter():  # one text path for both (the shared-prefix one rounds differently)
            off = PromptClassifier(model, tok(), CLASSNAMES, template=TEMPLATE, shared_prefix=False).eval()(pixels())
        untouched = PromptClassifier(_BASE, tok(), CLASSNAMES, template=TEMPLATE, shared_prefix=False).eval()
        assert torch.equal(off, untouched(pixels()))
        assert not torch.allclose(before, off)  # the adapter did change the logits


# ---- AutoPeftModel in a fresh process; the zero-shot pipelines ---------------------------------------------------
@pytest.mark.slow
def test_auto_peft_model_in_a_fresh_process_gives_bit_identical_logits(tmp_path):
    _BASE.save_pretrained(tmp_path / "base")
    expected = {}
    for method in ("coop-front", "prefix"):
        model = get_peft_model(MetaClip2Model.from_pretrained(tmp_path / "base").eval(), ALL[method]())
        randomise(model)
        model.save_pretrained(tmp_path / method)
        with torch.no_grad():
            expected[method] = classifier(model)(pixels())
    torch.save({"pixels": pixels(), **expected}, tmp_path / "expected.pt")
    script = textwrap.dedent(
        f"""
        import torch
        torch.set_num_threads(1)
        import peft_vlprompt
        from peft import AutoPeftModel, PeftModel
        from transformers import MetaClip2Model
        from tests.tiny_metaclip2 import xlmv_like_tokenizer
        data = torch.load({str(tmp_path / "expected.pt")!r})
        for method in ("coop-front", "prefix"):
            model = AutoPeftModel.from_pretrained({str(tmp_path)!r} + "/" + method).eval()
            assert type(model) is PeftModel and isinstance(model.base_model.model, MetaClip2Model), type(model)
            clf = peft_vlprompt.PromptClassifier(model, xlmv_like_tokenizer(), {CLASSNAMES!r}, template={TEMPLATE!r})
            with torch.no_grad():
                logits = clf.eval()(data["pixels"])
            assert torch.equal(logits, data[method]), (method, logits, data[method])
        print("OK")
        """
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    root = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=root)
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]


def processor():
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


@pytest.mark.parametrize("method", ["coop-front", "cocoop", "maple"])
def test_zero_shot_pipeline_matches_prompt_classifier(method):
    model = get_peft_model(base(), ALL[method]()).eval()
    randomise(model, std=2.0)  # large prompts, so they decide the ranking
    with torch.no_grad():
        probs = classifier(model)(processor()(images=pipeline_images(), return_tensors="pt")["pixel_values"]).softmax(
            -1
        )
    got = pipeline_scores(
        prompt_pipeline(model, tok(), processor(), template=TEMPLATE)(pipeline_images(), candidate_labels=CLASSNAMES),
        CLASSNAMES,
    )
    torch.testing.assert_close(got, probs, atol=1e-6, rtol=1e-5)
    if method != "cocoop":  # the stock pipeline with the placeholder template writes the same prompts
        stock = pipeline("zero-shot-image-classification", model=model, tokenizer=tok(), image_processor=processor())
        out = stock(
            pipeline_images(), candidate_labels=CLASSNAMES, hypothesis_template=hypothesis_template(model, TEMPLATE)
        )
        torch.testing.assert_close(pipeline_scores(out, CLASSNAMES), probs, atol=1e-5, rtol=1e-5)


# ---- the training command line on a MetaCLIP 2 folder (the checkpoint's own tokenizer, `ctx_init` and DPL's ensemble)
def test_train_command_line_runs_maple_and_dpl_ensemble_on_a_metaclip2_folder(tmp_path):
    from peft_vlprompt.training import main
    from tests.test_training_fixtures import CLASSNAMES as SHAPES
    from tests.test_training_fixtures import register_tiny_dataset

    words = WORDS + [w for name in SHAPES for w in name.split("_")]
    tokenizer = xlmv_like_tokenizer(words)
    folder = tmp_path / "metaclip2"
    tiny_metaclip2(vocab=len(tokenizer.get_vocab())).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    processor().save_pretrained(folder)
    found = DeepPromptConfig(mode="prefix", text_lengths=[1, 2], vision_lengths=[2, 0], text_input="ensemble")
    found.save_pretrained(tmp_path / "found")
    common = ["--dataset", register_tiny_dataset(), "--model", str(folder), "--shots", "2", "--num_epochs", "1",
              "--batch_size", "2", "--eval_batch_size", "16", "--no_eval_zero_shot", "--protocol", "base2new"]  # fmt: skip
    for method, extra in (("maple", []), ("dpl", ["--config", str(tmp_path / "found" / "adapter_config.json")])):
        results = main(["--method", method, "--output_dir", str(tmp_path / method), *common, *extra])
        assert all(0 <= results[k] <= 100 for k in ("base_accuracy", "new_accuracy")), results
        config = PeftConfig.from_pretrained(tmp_path / method / "adapter")
        assert config.token_ids_from == "tokenizer"  # the checkpoint's tokenizer gave the ids, not CLIP's BPE
    maple = PeftConfig.from_pretrained(tmp_path / "maple" / "adapter")
    assert maple.ctx_init_token_ids == tokenizer(maple.ctx_init, add_special_tokens=False)["input_ids"]
