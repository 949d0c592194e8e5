"""KgCoOp: defaults, the knowledge-guided term end to end against hand-computed features, save/load."""

import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_vlprompt import KgCoOpConfig, PromptClassifier, losses
from tests.reference_text import normalize, text_feature
from tests.tiny import pixels, tiny_clip, tokenizer

CLASSNAMES = ["cat", "golden retriever", "sea lion"]
SOS, EOS, PERIOD = 49406, 49407, 269
CTX_KEY = "base_model.model.text_model.embeddings.token_embedding.coop_ctx"


def context(model) -> torch.nn.Parameter:
    return model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]


def hand_features(base, ctx: torch.Tensor | None, template: str | None = None) -> torch.Tensor:
    """Normalised class features: learned context + class (ctx given) or the hand-crafted template, by hand."""
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    feats = []
    for name in CLASSNAMES:
        if ctx is not None:
            name_ids = tokenizer()(name, add_special_tokens=False)["input_ids"]
            seq = torch.cat([emb[[SOS]], ctx, emb[name_ids + [PERIOD, EOS]]])
        else:
            seq = emb[tokenizer()(template.format(name))["input_ids"]]
        feats.append(text_feature(base, seq, eot_position=seq.shape[0] - 1))
    return normalize(torch.stack(feats))


def test_defaults_follow_kgcoop():
    config = KgCoOpConfig()
    assert (config.n_ctx, config.ctx_init, config.kg_weight, config.teacher_template) == (
        4,
        "a photo of a",
        8.0,
        "a photo of a {}.",
    )
    assert config.ctx_init_token_ids == [320, 1125, 539, 320]


def test_knowledge_guided_term_end_to_end():
    template = "a photo of a {}, a type of pet."
    config = KgCoOpConfig(teacher_template=template, kg_weight=4.0)
    model = get_peft_model(tiny_clip(), config)
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES, template=config.teacher_template).train()
    # at init the learned prompt is "a photo of a {class}." -- not the teacher's "..., a type of pet."
    base = tiny_clip()
    initial = losses.kgcoop_loss(clf.text_features(), clf.zero_shot_text_features(), weight=config.kg_weight)
    cos = (hand_features(base, context(model).detach()) * hand_features(base, None, template)).sum(-1)
    torch.testing.assert_close(initial["kgcoop"].detach(), 4.0 * (1 - cos.mean()), atol=1e-5, rtol=0)
    assert initial["kgcoop"] > 0

    # with the teacher equal to the init phrase + class, the term starts at exactly zero (same token embeddings)
    same = PromptClassifier(model, tokenizer(), CLASSNAMES, template="a photo of a {}.").train()
    assert losses.kgcoop_loss(same.text_features(), same.zero_shot_text_features())["kgcoop"].abs() < 1e-6

    # one objective step: CE + kg term; only the context moves, and the term's gradient reaches it
    frozen = {k: v.clone() for k, v in model.state_dict().items() if "coop_ctx" not in k}
    optimizer = torch.optim.SGD([context(model)], lr=0.01)
    text = clf.text_features()
    logits = clf.logits(clf.image_features(pixels()), text)
    kg = losses.kgcoop_loss(text, clf.zero_shot_text_features(), weight=config.kg_weight)["kgcoop"]
    kg_grad = torch.autograd.grad(kg, context(model), retain_graph=True)[0]
    assert kg_grad.abs().sum() > 0
    (F.cross_entropy(logits, torch.tensor([0, 2])) + kg).backward()
    before = context(model).detach().clone()
    optimizer.step()
    assert not torch.equal(context(model).detach(), before)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())


def test_save_load_round_trip_is_bit_identical(tmp_path):
    config = KgCoOpConfig(kg_weight=2.5, teacher_template="a photo of a {}, a type of texture.")
    model = get_peft_model(tiny_clip(), config)
    context(model).data.normal_(generator=torch.Generator().manual_seed(4))
    model.save_pretrained(tmp_path)
    assert list(load_file(tmp_path / "adapter_model.safetensors")) == [CTX_KEY]
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is KgCoOpConfig
    assert (loaded.kg_weight, loaded.teacher_template, loaded.n_ctx) == (2.5, "a photo of a {}, a type of texture.", 4)
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    assert [n for n, p in model.named_parameters() if p.requires_grad] == [CTX_KEY + ".default"]
    images = pixels()
    before = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    after = PromptClassifier(reloaded, tokenizer(), CLASSNAMES).eval()(images)
    assert torch.equal(before, after)


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(kg_weight=-1.0), ValueError, "`kg_weight` must be a finite number >= 0, got -1.0"),
        (dict(kg_weight=None), TypeError, "`kg_weight` must be a float, got NoneType"),
        (dict(teacher_template="a photo"), ValueError, "`teacher_template` must contain '{}'"),
    ],
)
def test_config_errors_name_field_and_value(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        KgCoOpConfig(**kwargs)
