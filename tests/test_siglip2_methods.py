"""Every method on SigLIP 2 (`Siglip2Model`) with fixed-resolution images, offline on a tiny random model.

SigLIP 2's text tower, encoder layers, post-norm, pooling head and logit rule are SigLIP's, so each method's logits
are checked against the SigLIP hand re-statements of `tests.tiny_siglip` (plain tensor ops on the weights of
`tiny_siglip()`), and `tiny_siglip2()` holds those same weights (`tests.test_siglip2_backbone`, where that copy and
the patch order are checked against transformers' own NaFlex processor and `get_image_features`). The prompt
layouts written out per method are the SigLIP tests' (imported, not restated).
"""

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from safetensors.torch import load_file
from transformers import Siglip2Model

from peft_vlprompt import CoCoOpConfig, CoOpConfig, DeepPromptConfig, PromptClassifier
from peft_vlprompt.backbones import backbone_for
from peft_vlprompt.diagnostics import feature_shift
from peft_vlprompt.tuners.deep_prompt import VisionHeadInput
from peft_vlprompt.tuners.deep_prompt.config import PromptSRCConfig
from peft_vlprompt.tuners.dpl.config import DPLSearchConfig
from peft_vlprompt.tuners.kgcoop.config import KgCoOpConfig
from peft_vlprompt.tuners.prograd_coop.config import ProGradCoOpConfig
from tests.test_siglip2_backbone import tiny_siglip2
from tests.test_siglip_methods import CLASS_WORDS, CLASSNAMES, N_CTX, coop_rows, randomise, template_rows, trained
from tests.test_siglip_vision_prompts import CASES as VISION_CASES
from tests.test_siglip_vision_prompts import expected_logits
from tests.tiny import pixels
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


def classifier(model):
    return PromptClassifier(model, word_tokenizer(), CLASSNAMES).eval()


def logits(model):
    with torch.no_grad():
        return classifier(model)(pixels())


def close(got, expected):
    assert got.isfinite().all()
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_zero_shot_logits_are_the_siglip_restatement():
    base = tiny_siglip()
    expected = sigmoid_logits(base, text_features(base, template_rows(base)), vision_features(base, pixels()))
    close(logits(tiny_siglip2()), expected)


# ---- CoOp family: three positions, class-specific, ProGrad-CoOp, KgCoOp; CoCoOp -------------------------------------
COOP = {
    **{f"coop-{p}": lambda p=p: CoOpConfig(n_ctx=N_CTX, class_token_position=p) for p in ("end", "middle", "front")},
    "csc-middle": lambda: CoOpConfig(n_ctx=N_CTX, class_token_position="middle", class_specific=True, n_classes=3),
    "prograd": lambda: ProGradCoOpConfig(n_ctx=N_CTX, ctx_init=None),
    "kgcoop": lambda: KgCoOpConfig(n_ctx=N_CTX, ctx_init=None),
}


@pytest.mark.parametrize("case", list(COOP))
def test_coop_family_logits_match_the_siglip_restatement(case):
    config = COOP[case]()
    model = get_peft_model(tiny_siglip2(), config)
    ctx = trained(randomise(model), "coop_ctx")
    base = tiny_siglip()
    position = config.class_token_position
    rows = [coop_rows(position, ctx[c] if config.class_specific else ctx, w, base) for c, w in enumerate(CLASS_WORDS)]
    close(logits(model), sigmoid_logits(base, text_features(base, torch.stack(rows)), image_features(base, pixels())))


def test_cocoop_logits_match_the_siglip_restatement():
    model = get_peft_model(tiny_siglip2(), CoCoOpConfig().tokenize_with(word_tokenizer()))
    named = randomise(model, std=0.5)
    ctx, fc1w, fc1b, fc2w, fc2b = (trained(named, k) for k in ("coop_ctx", "fc1.default.weight", "fc1.default.bias",
                                                               "fc2.default.weight", "fc2.default.bias"))  # fmt: skip
    base = tiny_siglip()
    expected = []
    for v in image_features(base, pixels()):  # pi(x) = fc2(relu(fc1(normalised image feature))) shifts the context
        shift = F.relu(F.normalize(v, dim=-1) @ fc1w.T + fc1b) @ fc2w.T + fc2b
        rows = [coop_rows("end", ctx + shift, w, base) for w in CLASS_WORDS]
        expected.append(sigmoid_logits(base, text_features(base, torch.stack(rows)), v[None])[0])
    close(logits(model), torch.stack(expected))


@pytest.mark.parametrize("config", [KgCoOpConfig, ProGradCoOpConfig])
def test_kgcoop_and_prograd_teachers_are_the_zero_shot_features(config):
    model = get_peft_model(tiny_siglip2(), config(n_ctx=N_CTX, ctx_init=None))
    randomise(model)
    base = tiny_siglip()
    expected = F.normalize(text_features(base, template_rows(base)), dim=-1)
    close(classifier(model).zero_shot_text_features(), expected)


# ---- deep prompts: text replace / prefix, prefix on both towers (DPL's trained layout), DPL search -------------------
@pytest.mark.parametrize("mode", ["replace", "prefix"])
def test_deep_text_prompts_match_the_siglip_restatement(mode):
    model = get_peft_model(tiny_siglip2(), DeepPromptConfig(mode=mode, text_lengths=[2, 3], vision_lengths=[0, 0]))
    named = randomise(model)
    base = tiny_siglip()
    if mode == "replace":  # three slots; layer 0 replaces two of them, layer 1 all three
        rows = torch.stack([prompt_embeds(["x"] * 3 + w + ["."], base) for w in CLASS_WORDS])
        rows[:, :2] = trained(named, "token_embedding")
        text = text_features(base, rows, replace={1: trained(named, "text_model.encoder.layers.1.")})
    else:
        prefix = {i: trained(named, f"text_model.encoder.layers.{i}.") for i in (0, 1)}
        text = text_features(base, template_rows(base), prefix=prefix)
    close(logits(model), sigmoid_logits(base, text, image_features(base, pixels())))


def test_dpl_trained_layout_prefix_prompts_on_both_towers_match_the_siglip_restatement():
    model = get_peft_model(tiny_siglip2(), DeepPromptConfig(mode="prefix", text_lengths=[0, 2], vision_lengths=[1, 2]))
    named = randomise(model)
    base = tiny_siglip()
    text = text_features(base, template_rows(base), prefix={1: trained(named, "text_model.encoder.layers.1.")})
    vision = {i: trained(named, f"vision_model.encoder.layers.{i}.") for i in (0, 1)}
    close(logits(model), sigmoid_logits(base, text, vision_features(base, pixels(), prefix=vision)))


def test_dpl_search_with_one_hot_alpha_matches_the_prefix_restatement():
    model = get_peft_model(tiny_siglip2(), DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]))
    randomise(model)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "dpl_alpha" in name:
                p.copy_(torch.tensor([-1e4, 1e4]))
    named = {n: p.detach().clone() for n, p in model.named_parameters() if "dpl_prompts" in n}
    base = tiny_siglip()
    text = {i: trained(named, f"text_model.encoder.layers.{i}.") for i in (0, 1)}
    vision = {i: trained(named, f"vision_model.encoder.layers.{i}.") for i in (0, 1)}
    expected = sigmoid_logits(
        base, text_features(base, template_rows(base), prefix=text), vision_features(base, pixels(), prefix=vision)
    )
    close(logits(model), expected)


# ---- appended vision prompts (IVLP, VPT, MaPLe, PromptSRC, RESTORE): dropped before the head, as on SigLIP ------------
@pytest.mark.parametrize("case", list(VISION_CASES))
def test_vision_prompt_methods_match_the_siglip_restatement(case):
    model = get_peft_model(tiny_siglip2(), VISION_CASES[case]())
    named = randomise(model)
    assert isinstance(model.base_model.model.vision_model.post_layernorm, VisionHeadInput)
    close(logits(model), expected_logits(case, named, tiny_siglip()))


@pytest.mark.parametrize("case", ["vision-layer-1-only", "maple"])
def test_vision_prompts_under_sdpa_match_the_siglip_restatement(case):
    # the default kernel: no mask is built for the grown sequence either (prompts added at layer 1 only)
    base = tiny_siglip2()
    base.set_attn_implementation("sdpa")
    model = get_peft_model(base, VISION_CASES[case]())
    named = randomise(model)
    close(logits(model), expected_logits(case, named, tiny_siglip()))


def test_restore_vision_feature_shift_is_the_siglip_restatement():
    # per block: mean over images and the 16 patches of ‖h(prompted) − h(base)‖ / ‖h(base)‖, the base and prompted
    # vision passes both fed through `vision_inputs` (patches + spatial_shapes); hidden states restated by hand
    model = get_peft_model(tiny_siglip2(), VISION_CASES["restore"]())
    named = randomise(model)
    proj = {i: [trained(named, f"{path}deep_proj.default.{k}") for k in ("weight", "bias")]
            for i, path in ((0, "vision_model.embeddings."), (1, "vision_model.encoder.layers.1."))}  # fmt: skip
    text_prompts = {0: trained(named, "token_embedding"), 1: trained(named, "text_model.encoder.layers.1.")}
    append = {i: text_prompts[i] @ proj[i][0].T + proj[i][1] for i in (0, 1)}
    _, prompted = vision_features(tiny_siglip(), pixels(), append=append, hidden_states=True)
    _, plain = vision_features(tiny_siglip(), pixels(), hidden_states=True)
    expected = torch.stack([((p[:, :16] - b).norm(dim=-1) / b.norm(dim=-1)).mean() for p, b in zip(prompted, plain)])
    with torch.no_grad():
        torch.testing.assert_close(feature_shift(model, pixel_values=pixels())["vision"], expected, atol=1e-5,
                                   rtol=1e-4)  # fmt: skip


# ---- every method: save/load bit-identical, disable_adapter() equals the untouched model -------------------------
ALL = {
    **COOP,
    "cocoop": lambda: CoCoOpConfig().tokenize_with(word_tokenizer()),
    "deep-replace": lambda: DeepPromptConfig(text_lengths=[2, 3], vision_lengths=[0, 0]),
    "deep-prefix": lambda: DeepPromptConfig(mode="prefix", text_lengths=[2, 3], vision_lengths=[1, 2]),
    "dpl-search": lambda: DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 1]),
    "ivlp": VISION_CASES["ivlp"],
    "maple": VISION_CASES["maple"],
    "promptsrc": lambda: PromptSRCConfig(text_lengths=[4, 4], vision_lengths=[4, 4]).tokenize_with(word_tokenizer()),
    "restore": VISION_CASES["restore"],
}


@pytest.mark.parametrize("method", list(ALL))
def test_save_load_bit_identical_and_disable_adapter_is_the_base(method, tmp_path):
    model = get_peft_model(tiny_siglip2(), ALL[method]())
    randomise(model)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_siglip2(), tmp_path)
    base = tiny_siglip2().requires_grad_(False)  # frozen as peft leaves it (the head's MHA kernel choice)
    before = logits(model)
    assert before.isfinite().all() and torch.equal(before, logits(reloaded))
    with model.disable_adapter():
        off = logits(model)
    assert torch.equal(off, logits(base)) and not torch.allclose(before, off)


# ---- examples/train.py's loop end to end on a tiny SigLIP 2 saved with its NaFlex processor -----------------------
@pytest.fixture(scope="module")
def siglip2_dir(tmp_path_factory):
    from transformers import Siglip2ImageProcessor

    folder = tmp_path_factory.mktemp("tiny_siglip2")
    tiny_siglip2().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    Siglip2ImageProcessor(patch_size=8, max_num_patches=16).save_pretrained(folder)  # -> 32x32 images
    return folder


@pytest.mark.parametrize("method", ["coop", "cocoop", "maple", "restore", "dpl"])
def test_training_main_runs_on_siglip2(method, siglip2_dir, tmp_path, monkeypatch):
    from peft_vlprompt.backbones import Siglip2Backbone
    from peft_vlprompt.training import main
    from tests.test_training_fixtures import base_args

    # `AutoTokenizer` loads any siglip2 folder as `Siglip2Tokenizer`, which rebuilds a Gemma-style BPE around the
    # saved vocabulary (the word-level test tokenizer then maps most words to <unk>): hand it the word tokenizer
    monkeypatch.setattr(Siglip2Backbone, "load_tokenizer", classmethod(lambda cls, path: word_tokenizer()))
    out = tmp_path / method
    # RESTORE with the feature-shift definition: its vision passes go through `vision_inputs` too
    extra = ["--adapter_kwargs", json.dumps({"fs_definition": "features"})] if method == "restore" else []
    if method == "dpl":  # DPL's training stage on a found layout (prefix prompts in both towers)
        DeepPromptConfig(mode="prefix", text_lengths=[1, 2], vision_lengths=[2, 0]).save_pretrained(tmp_path / "found")
        extra = ["--config", str(tmp_path / "found" / "adapter_config.json")]
    results = main(base_args(siglip2_dir, out, method, "--no_eval_zero_shot", *extra))
    assert results["global_step"] == 8 and 0 <= results["hm"] <= 100
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert saved and all(torch.isfinite(v).all() for v in saved.values())
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"]
    reloaded = PeftModel.from_pretrained(tiny_siglip2(), out / "adapter")
    assert backbone_for(reloaded).family == "siglip2" and logits(reloaded).isfinite().all()


# ---- AutoPeftModel in a fresh process; the zero-shot pipeline with the fixed-size processor -----------------------
@pytest.mark.slow  # a fresh interpreter imports torch and transformers
def test_auto_peft_model_in_a_fresh_process_gives_bit_identical_logits(tmp_path):

    tiny_siglip2().save_pretrained(tmp_path / "base")
    model = get_peft_model(Siglip2Model.from_pretrained(tmp_path / "base").eval(), ALL["maple"]())
    randomise(model)
    model.save_pretrained(tmp_path / "adapter")
    torch.save({"pixels": pixels(), "logits": logits(model)}, tmp_path / "expected.pt")
    assert_auto_peft_model_in_fresh_process(tmp_path / "adapter", tmp_path / "expected.pt", "Siglip2Model", CLASSNAMES)


@pytest.mark.parametrize("method", ["coop-front", "cocoop", "maple"])
def test_zero_shot_pipeline_matches_prompt_classifier(method):
    from transformers import Siglip2ImageProcessor

    from peft_vlprompt.backbones import Siglip2Backbone
    from peft_vlprompt.hub import prompt_pipeline
    from tests.test_siglip2_backbone import images

    # the processor `load_backbone` gives for the NaFlex one (32x32 squares); 64 text positions as in the SigLIP test
    fixed = Siglip2Backbone.fixed_image_processor(Siglip2ImageProcessor(patch_size=8, max_num_patches=16))
    model = get_peft_model(tiny_siglip2(max_len=64), ALL[method]()).eval()
    randomise(model)
    ims = images(4, size=(40, 48))
    with torch.no_grad():
        expected = torch.sigmoid(classifier(model)(fixed(images=ims, return_tensors="pt")["pixel_values"]))
    out = prompt_pipeline(model, word_tokenizer(), fixed)(ims, candidate_labels=CLASSNAMES)
    got = torch.tensor([[{d["label"]: d["score"] for d in o}[name] for name in CLASSNAMES] for o in out])
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)


def test_dpl_search_steps_on_siglip2_equal_those_on_the_same_weights_in_siglip(tmp_path):
    # the bilevel step (alpha on the validation loss, then the prompts) runs images through `vision_inputs`; on the
    # same weights it must move alpha and the prompts exactly as on SigLIP (its vision tower takes the images as is)
    from peft_vlprompt.dpl import DPLSearch, DPLSearchArguments
    from peft_vlprompt.tuners.dpl import alpha_parameters, prompt_parameters
    from tests.test_metaclip2_methods import Images

    args = DPLSearchArguments(num_epochs=2, batch_size=2, lr=0.05, alpha_lr=0.05, log_every=1000, warmup_epochs=0,
                              momentum=0.9, weight_decay=0.01, max_steps=2)  # fmt: skip
    moved = []
    for name, make in (("siglip2", tiny_siglip2), ("siglip", tiny_siglip)):
        base = make()
        torch.manual_seed(0)  # the adapter's initialisation
        config = DPLSearchConfig(text_candidates=[0, 1, 2], vision_candidates=[0, 2], prompt_init="normal",
                                 init_std=0.3)  # fmt: skip
        model = get_peft_model(base, config)
        before = [p.detach().clone() for p in alpha_parameters(model) + prompt_parameters(model)]
        search = DPLSearch(model, classifier(model).train(), Images(6, 1), Images(3, 2), args, tmp_path / name,
                           keyed_train=True)  # fmt: skip
        search.run()
        after = alpha_parameters(search.model) + prompt_parameters(search.model)
        assert all(not torch.equal(a, b) for a, b in zip(after, before) if a.shape[0] > 0)
        moved.append([p.detach() for p in after])
    for a, b in zip(*moved):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
