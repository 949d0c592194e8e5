"""Vision prompts that add tokens on SigLIP (replace mode: IVLP, VPT-deep, MaPLe, PromptSRC, RESTORE).

SigLIP pools with an attention head over all tokens and has no CLS, so the rule is: appended vision prompts take part
in every encoder layer as on CLIP and are dropped before the post-norm and the head, which see exactly the patches.
Expected values come from the hand re-statement of `tests/tiny_siglip.py` (`vision_features(append=...)`: plain
tensor ops on the weights of an untouched model, the sequence cut back to the patches before the post-LN).
"""

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import SiglipImageProcessor

from peft_vlprompt import DeepPromptConfig, PromptClassifier
from peft_vlprompt.backbones import backbone_for
from peft_vlprompt.backbones.siglip import SiglipBackbone
from peft_vlprompt.diagnostics import feature_shift
from peft_vlprompt.losses.restore import restore_losses
from peft_vlprompt.text_prefix import shared_prefix_text_features
from peft_vlprompt.tuners.deep_prompt import VisionHeadInput
from peft_vlprompt.tuners.deep_prompt.config import PromptSRCConfig
from peft_vlprompt.tuners.restore import RestoreAdapterConfig, restore_prompt_pairs
from tests.test_siglip_methods import CLASS_WORDS, CLASSNAMES
from tests.tiny import pixels, tiny_clip
from tests.tiny_siglip import (
    MAX_LEN,
    VOCAB,
    image_features,
    prompt_embeds,
    sigmoid_logits,
    text_features,
    tiny_siglip,
    vision_features,
    word_tokenizer,
)

TEMPLATE_WORDS = ["a", "photo", "of", "a"]


def classifier(model):
    return PromptClassifier(model, word_tokenizer(), CLASSNAMES).eval()


def randomise(model, seed=3):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_()
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def trained(named, key):
    (value,) = [v for n, v in named.items() if key in n]
    return value


def rows(base, prefix_words, context=None):
    """(C, MAX_LEN, d) input embeddings of "<prefix words> <class>." with rows 0.. replaced by `context`."""
    out = torch.stack([prompt_embeds(prefix_words + w + ["."], base) for w in CLASS_WORDS])
    if context is not None:
        out[:, : context.shape[0]] = context
    return out


def linear(x, weight, bias):
    return x @ weight.T + bias


CASES = {  # name -> config factory
    "ivlp": lambda: DeepPromptConfig(text_lengths=[2, 3], vision_lengths=[2, 3]),
    "vpt-deep": lambda: DeepPromptConfig(vision_lengths=[2, 3]),  # text: the classifier's template
    "vision-input-only": lambda: DeepPromptConfig(vision_lengths=[3, 0]),  # carried through layer 1, then dropped
    "vision-layer-1-only": lambda: DeepPromptConfig(vision_lengths=[0, 2]),
    "maple": lambda: DeepPromptConfig(text_lengths=[2, 2], coupling="maple"),
    "promptsrc": lambda: PromptSRCConfig(text_lengths=[4, 4], vision_lengths=[4, 4]).tokenize_with(word_tokenizer()),
    "restore": lambda: RestoreAdapterConfig(
        text_lengths=[2, 2], vision_lengths=[2, 2], text_ratio=0.5, vision_ratio=0.7
    ).tokenize_with(word_tokenizer()),
}


def surgery(features, named, tower, ratio):
    """RESTORE's f + r · fc2(QuickGELU(fc1(LN(f)))) restated from the trained tensors of one tower's adapter."""
    path = "text_model.head" if tower == "text" else "vision_model.head"
    weights = {part: [trained(named, f"{path}.restore_{part}.default.{k}") for k in ("weight", "bias")]
               for part in ("norm", "fc1", "fc2")}  # fmt: skip
    mean, var = features.mean(-1, keepdim=True), features.var(-1, unbiased=False, keepdim=True)
    x = (features - mean) / torch.sqrt(var + 1e-5) * weights["norm"][0] + weights["norm"][1]
    x = linear(x, *weights["fc1"])
    x = x * torch.sigmoid(1.702 * x)  # QuickGELU
    return features + ratio * linear(x, *weights["fc2"])


def expected_logits(case, named, base):
    """The hand re-statement of each case's logits (prompt layouts written out per method)."""
    text_slot = lambda i: trained(named, "token_embedding" if i == 0 else f"text_model.encoder.layers.{i}.")  # noqa: E731
    vision_slot = lambda i: trained(  # noqa: E731
        named, "vision_model.embeddings." if i == 0 else f"vision_model.encoder.layers.{i}."
    )
    if case == "ivlp":  # three text slots (the longest text prompt); layer 0 replaces two of them, layer 1 all three
        text = text_features(base, rows(base, ["x"] * 3, text_slot(0)), replace={1: text_slot(1)})
        append = {0: vision_slot(0), 1: vision_slot(1)}
    elif case in ("vpt-deep", "vision-input-only", "vision-layer-1-only"):
        text = text_features(base, rows(base, TEMPLATE_WORDS))
        lengths = CASES[case]().vision_lengths
        append = {i: vision_slot(i) for i, n in enumerate(lengths) if n}
    elif case == "promptsrc":  # "a photo of a" is the whole 4-slot context, learned
        text = text_features(base, rows(base, TEMPLATE_WORDS, text_slot(0)), replace={1: text_slot(1)})
        append = {0: vision_slot(0), 1: vision_slot(1)}
    else:  # maple / restore: vision prompts of index i = Linear_i(text prompts of index i)
        words = ["x", "x"] if case == "maple" else TEMPLATE_WORDS  # RESTORE: ctx_init "a photo of a", 2 slots learned
        text = text_features(base, rows(base, words, text_slot(0)), replace={1: text_slot(1)})
        proj = {
            i: (trained(named, f"{path}deep_proj.default.weight"), trained(named, f"{path}deep_proj.default.bias"))
            for i, path in ((0, "vision_model.embeddings."), (1, "vision_model.encoder.layers.1."))
        }
        append = {i: linear(text_slot(i), *proj[i]) for i in (0, 1)}
    image = vision_features(base, pixels(), append=append)
    if case == "restore":
        text, image = surgery(text, named, "text", 0.5), surgery(image, named, "vision", 0.7)
    return sigmoid_logits(base, text, image)


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_the_hand_restatement_with_prompts_dropped_before_the_head(case):
    model = get_peft_model(tiny_siglip(), CASES[case]())
    named = randomise(model)
    head_input = model.base_model.model.vision_model.post_layernorm
    assert isinstance(head_input, VisionHeadInput) and not list(head_input.deep_prompt)  # holds no prompts
    base = tiny_siglip()
    with torch.no_grad():
        got = classifier(model)(pixels())
    torch.testing.assert_close(got, expected_logits(case, named, base), atol=1e-5, rtol=1e-5)


def test_the_hand_restatement_without_prompts_is_the_model():
    # the reference itself: no prompts, the transformers tower (so a wrong restatement cannot pass the matrix above)
    base = tiny_siglip()
    torch.testing.assert_close(vision_features(base, pixels()), image_features(base, pixels()), atol=1e-5, rtol=1e-5)


def test_pooling_the_appended_prompts_would_give_other_features():
    # the drop is what the matrix checks: a head that also pooled the prompts gives different image features
    model = get_peft_model(tiny_siglip(), CASES["vpt-deep"]())
    named = randomise(model)
    vision = model.base_model.model.vision_model
    with torch.no_grad():
        dropped = vision(pixel_values=pixels()).pooler_output
        kept = vision.head(vision.post_layernorm.base_layer(vision(pixel_values=pixels(), output_hidden_states=True)
                                                              .hidden_states[-1]))  # fmt: skip
    assert kept.shape == dropped.shape and not torch.allclose(kept, dropped, atol=1e-4)
    append = {0: trained(named, "vision_model.embeddings."), 1: trained(named, "vision_model.encoder.layers.1.")}
    torch.testing.assert_close(dropped, vision_features(tiny_siglip(), pixels(), append=append), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("case", ["ivlp", "vision-input-only", "maple", "promptsrc", "restore"])
def test_save_load_bit_identical_and_disable_adapter_is_the_base(case, tmp_path):
    model = get_peft_model(tiny_siglip(), CASES[case]())
    randomise(model)
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_siglip(), tmp_path)
    base = tiny_siglip().requires_grad_(False)  # frozen as peft leaves it (the head's attention kernel choice)
    with torch.no_grad():
        before = classifier(model)(pixels())
        assert torch.equal(before, classifier(reloaded)(pixels()))
        with model.disable_adapter():
            off = classifier(model)(pixels())
            features = model.get_image_features(pixel_values=pixels()).pooler_output
        assert torch.equal(off, classifier(base)(pixels()))
        assert torch.equal(features, base.get_image_features(pixel_values=pixels()).pooler_output)
        assert not torch.allclose(before, off)


def test_restore_vision_feature_shift_counts_only_the_patches():
    # the paper's shift per block: mean over images and the base pass's tokens (the 16 patches: no CLS on SigLIP)
    # of ‖h(prompted) − h(base)‖ / ‖h(base)‖; hidden states restated by hand, prompts cut off before comparing
    model = get_peft_model(tiny_siglip(), CASES["restore"]())
    named = randomise(model)
    base = tiny_siglip()
    proj = {
        i: (trained(named, f"{path}deep_proj.default.weight"), trained(named, f"{path}deep_proj.default.bias"))
        for i, path in ((0, "vision_model.embeddings."), (1, "vision_model.encoder.layers.1."))
    }
    text_prompts = {0: trained(named, "token_embedding"), 1: trained(named, "text_model.encoder.layers.1.")}
    append = {i: linear(text_prompts[i], *proj[i]) for i in (0, 1)}
    _, prompted = vision_features(base, pixels(), append=append, hidden_states=True)
    _, plain = vision_features(base, pixels(), hidden_states=True)
    assert prompted[0].shape[1] == 16 + 2 and plain[0].shape[1] == backbone_for(base).num_image_tokens == 16
    expected = torch.stack([((p[:, :16] - b).norm(dim=-1) / b.norm(dim=-1)).mean() for p, b in zip(prompted, plain)])
    clf = classifier(model)
    ids = clf.tokenize(clf.prompts(clf.prompt_config()))
    with torch.no_grad():
        shifts = feature_shift(model, ids, pixels())
        torch.testing.assert_close(shifts["vision"], expected, atol=1e-5, rtol=1e-4)
        loss = restore_losses(model, ids, pixels(), definition="features", weight=2.0)["restore_fs"]
    torch.testing.assert_close(loss, 2.0 * ((shifts["text"] - shifts["vision"]) ** 2).sum())


def test_a_head_pooling_family_naming_no_head_input_is_refused(monkeypatch):
    monkeypatch.setattr(SiglipBackbone, "vision_head_input", "")
    with pytest.raises(ValueError, match=r"`vision_lengths`=\[2, 0\].*siglip.*`vision_head_input`"):
        get_peft_model(tiny_siglip(), DeepPromptConfig(text_lengths=[2, 0], vision_lengths=[2, 0]))
    get_peft_model(tiny_siglip(), DeepPromptConfig(text_lengths=[2, 2]))  # text only: nothing to drop


def test_clip_gets_no_drop_before_its_cls_pooling():
    config = DeepPromptConfig(text_lengths=[2, 2], vision_lengths=[2, 2])
    model = get_peft_model(tiny_clip(), config)
    assert not any(isinstance(m, VisionHeadInput) for m in model.modules())
    assert {spec.kind for spec in config.layer_specs(backbone_for(model)).values()} == {"embedding", "layer"}


def test_bidirectional_text_keeps_full_padding_and_no_shared_prefix():
    # SigLIP's text attention sees padding and later tokens: neither shortcut is exact, so neither is taken
    model = get_peft_model(tiny_siglip(), CASES["ivlp"]())
    clf = classifier(model)
    ids = clf.tokenize(clf.prompts(clf.prompt_config()))
    assert ids.shape == (3, MAX_LEN)  # padded to every position, not to the longest prompt (7 tokens)
    same_prefix = word_tokenizer()(["a photo of a photo of a cat.", "a photo of a photo of a golden retriever."],
                                   padding="max_length", max_length=MAX_LEN, return_tensors="pt")["input_ids"]  # fmt: skip
    with torch.no_grad():
        assert shared_prefix_text_features(tiny_siglip(), same_prefix) is None
        assert shared_prefix_text_features(model, same_prefix) is None


# ---- examples/train.py's loop end to end on a tiny SigLIP (+ its word tokenizer) saved to disk -------------------------------------------
@pytest.fixture(scope="module")
def siglip_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_siglip")
    tiny_siglip().save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("method", ["ivlp", "maple", "promptsrc", "restore"])
def test_training_main_runs_vision_prompt_methods_on_siglip(method, siglip_dir, tmp_path):
    from safetensors.torch import load_file

    from peft_vlprompt.training import main
    from tests.test_training_fixtures import base_args

    out = tmp_path / method
    extra = ["--adapter_kwargs", json.dumps({"fs_definition": "features"})] if method == "restore" else []
    results = main(base_args(siglip_dir, out, method, "--no_eval_zero_shot", *extra))
    assert results["global_step"] == 8 and 0 <= results["hm"] <= 100
    saved = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    if config["ctx_init"]:  # tokenized with the model's own tokenizer (SigLIP ships none with the package)
        assert config["ctx_init_token_ids"] == [VOCAB[w] for w in config["ctx_init"].split()]
    assert any("vision_model" in k for k in saved) and all(torch.isfinite(v).all() for v in saved.values())
    reloaded = PeftModel.from_pretrained(tiny_siglip(), out / "adapter")
    assert isinstance(reloaded.base_model.model.vision_model.post_layernorm, VisionHeadInput)
    assert F.normalize(classifier(reloaded).text_features(), dim=-1).isfinite().all()


# ---- RESTORE on SigLIP (issue 13): the same prompts and gradients as MaPLe plus the prompt-norm term, nothing else ----------
def test_restore_with_surgery_and_fs_off_computes_what_maple_does():
    # same prompt values in both: the logits and every shared parameter's CE gradient agree, the surgery adapters get
    # zero gradients (r = 0), and RESTORE has no trainable parameter beyond MaPLe's and its two surgery adapters
    restore = get_peft_model(tiny_siglip(), RestoreAdapterConfig(
        text_lengths=[2, 2], vision_lengths=[2, 2], text_ratio=0.0, vision_ratio=0.0, fs_weight=0.0
    ).tokenize_with(word_tokenizer()))  # fmt: skip
    maple = get_peft_model(tiny_siglip(), DeepPromptConfig(
        text_lengths=[2, 2], coupling="maple", ctx_init="a photo of a").tokenize_with(word_tokenizer()))  # fmt: skip
    named = randomise(restore)
    maple_params = {n: p for n, p in maple.named_parameters() if p.requires_grad}
    extra = {n for n in named if n not in maple_params}
    assert extra and all(".head.restore_" in n for n in extra) and set(maple_params) <= set(named)
    with torch.no_grad():
        for n, p in maple_params.items():
            p.copy_(named[n])
    labels = torch.tensor([0, 2])
    logits = {}
    for key, model in (("restore", restore), ("maple", maple)):
        logits[key] = classifier(model)(pixels())
        F.cross_entropy(logits[key], labels).backward()
    torch.testing.assert_close(logits["restore"], logits["maple"], atol=0, rtol=0)
    restore_params = dict(restore.named_parameters())
    for n, p in maple_params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, n
        torch.testing.assert_close(restore_params[n].grad, p.grad, atol=0, rtol=0)
    for n in extra:
        assert restore_params[n].grad is None or not restore_params[n].grad.any(), n


def test_restore_prompt_norm_term_pairs_and_gradients_follow_the_hand_derivation():
    # deep layer 1 only (index 0 is the input): P_v = W_1 P_t + b_1; with G = P Pᵀ and g = ‖G‖_F,
    # ∂g/∂P = 2 G P / g, L = (g_t / n_t − g_v / n_v)², n the creation-time g; only P_t,1, W_1 and b_1 get gradients
    model = get_peft_model(tiny_siglip(), CASES["restore"]())
    tower = model.base_model.model
    text_p = tower.text_model.encoder.layers[1].deep_prompt["default"]
    proj = tower.vision_model.encoder.layers[1].deep_proj["default"]

    def gram(p):
        return torch.sqrt(((p @ p.T) ** 2).sum())

    with torch.no_grad():
        n_t, n_v = gram(text_p), gram(linear(text_p, proj.weight, proj.bias))
        for n, p in model.named_parameters():
            if p.requires_grad and ("deep_prompt" in n or "deep_proj" in n):
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(7)) * 0.05)
    (pair,) = restore_prompt_pairs(model)
    assert pair[0] is text_p
    with torch.no_grad():
        vision_p = linear(text_p, proj.weight, proj.bias)
        torch.testing.assert_close(pair[1], vision_p)
        g_t, g_v = gram(text_p), gram(vision_p)
        diff = g_t / n_t - g_v / n_v
        grad_pt = 2 * diff * 2 * (text_p @ text_p.T) @ text_p / (g_t * n_t)
        grad_pv = -2 * diff * 2 * (vision_p @ vision_p.T) @ vision_p / (g_v * n_v)
    loss = restore_losses(model)["restore_fs"]
    torch.testing.assert_close(loss, diff**2)
    loss.backward()
    torch.testing.assert_close(text_p.grad, grad_pt + grad_pv @ proj.weight, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(proj.weight.grad, grad_pv.T @ text_p, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(proj.bias.grad, grad_pv.sum(0), rtol=1e-4, atol=1e-6)
    others = [n for n, p in model.named_parameters() if p.grad is not None and p.grad.any()]
    assert sorted(others) == sorted(
        n for n, p in model.named_parameters() if p is text_p or p is proj.weight or p is proj.bias
    )
