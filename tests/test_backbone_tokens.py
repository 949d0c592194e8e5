"""Token ids resolved per backbone family at injection; DPL's layer index and the KD teacher from the backbone."""

import dataclasses
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from peft import get_peft_model
from torch import nn

import peft_vlprompt as vlp
from peft_vlprompt.backbones import ClipBackbone, backbone_for
from peft_vlprompt.training.objectives import zero_shot_teacher
from tests.tiny import tiny_clip

# CLIP BPE ids by hand from the shipped vocab.json: "a</w>" 320, "photo</w>" 1125, "of</w>" 539, "x</w>" 343
A_PHOTO_OF_A = [320, 1125, 539, 320]


@dataclasses.dataclass(frozen=True)
class LetterBackbone(ClipBackbone):
    """CLIP's module tree with another tokenizer: one id per character (a by-hand rule the test can restate)."""

    family = "letters"

    @classmethod
    def default_tokenizer(cls):
        return lambda text, add_special_tokens=False: {"input_ids": [ord(c) for c in text if c != " "]}


@dataclasses.dataclass(frozen=True)
class NoTokenizerBackbone(ClipBackbone):
    family = "untokenized"

    @classmethod
    def default_tokenizer(cls):
        return None


def _sizes(family):
    return family.from_model.__func__(family, tiny_clip())


def test_configs_tokenize_with_the_default_family_and_keep_the_ids_on_a_clip_model():
    config = vlp.CoOpConfig(ctx_init="a photo of a")
    before = (config.ctx_init_token_ids, config.token_ids_from, config.placeholder_token_id)
    assert before == (A_PHOTO_OF_A, "clip", 343)
    get_peft_model(tiny_clip(), config)
    assert (config.ctx_init_token_ids, config.token_ids_from, config.placeholder_token_id) == before


def test_a_saved_config_without_token_ids_from_keeps_its_ids():
    # what adapter_config.json held before `token_ids_from` existed
    legacy = {"ctx_init": "a photo of a", "ctx_init_token_ids": [1, 2, 3, 4], "placeholder_token_id": 343}
    config = vlp.CoOpConfig(**legacy)
    assert (config.ctx_init_token_ids, config.token_ids_from) == ([1, 2, 3, 4], "clip")


def test_ids_from_another_family_are_tokenized_again_for_the_model():
    backbone = _sizes(LetterBackbone)
    words = vlp.CoOpConfig(ctx_init="a photo of a")
    words.validate_for_backbone(backbone)
    letters = [ord(c) for c in "aphotoofa"]
    assert (words.ctx_init_token_ids, words.token_ids_from, words.placeholder_token_id) == (letters, "letters", 88)
    assert (words.n_ctx, words.n_init, words.frozen_init_token_ids) == (4, 4, letters[4:])  # words split: M = 4
    tokens = vlp.CoOpConfig(ctx_init="a photo of a", ctx_init_split="tokens")
    assert tokens.n_ctx == 4
    tokens.validate_for_backbone(backbone)
    assert (tokens.n_ctx, tokens.frozen_init_token_ids) == (9, [])  # one vector per token of the model's tokenizer
    deep = vlp.DeepPromptConfig(text_lengths=[2, 0], vision_lengths=[0, 0], ctx_init="a photo")
    deep.validate_for_backbone(backbone)
    assert (deep.ctx_init_token_ids, deep.token_ids_from) == ([ord(c) for c in "aphoto"], "letters")


def test_a_family_without_a_tokenizer_asks_for_tokenize_with():
    backbone = _sizes(NoTokenizerBackbone)
    with pytest.raises(ValueError, match=r"untokenized family ships no tokenizer.*tokenize_with"):
        vlp.CoOpConfig(ctx_init="a photo of a").validate_for_backbone(backbone)
    plain = vlp.CoOpConfig(n_ctx=4)  # nothing to tokenize: the placeholder id stays unknown (slots are positional)
    plain.validate_for_backbone(backbone)
    assert (plain.placeholder_token_id, plain.token_ids_from) == (None, "untokenized")
    letters = LetterBackbone.default_tokenizer()
    given = vlp.CoOpConfig(ctx_init="a photo of a", ctx_init_split="tokens").tokenize_with(letters)
    given.validate_for_backbone(backbone)
    given.validate_for_backbone(ClipBackbone.from_model(tiny_clip()))  # given ids are never recomputed
    assert (given.ctx_init_token_ids, given.n_ctx, given.token_ids_from) == (
        [ord(c) for c in "aphotoofa"],
        9,
        "tokenizer",
    )
    assert given.placeholder_token_id == 88


def test_layer_index_comes_from_the_backbone():
    backbone = backbone_for(tiny_clip(text_layers=3, vision_layers=2))
    assert backbone.layer_index("text_model.encoder.layers.2.self_attn") == 2
    assert backbone.layer_index("vision_model.encoder.layers.1") == 1
    with pytest.raises(ValueError, match="text_projection"):
        backbone.layer_index("text_projection")


@dataclasses.dataclass(frozen=True)
class SigmoidBackbone(ClipBackbone):
    family = "sigmoid-test"
    logit_rule = "sigmoid"


def test_zero_shot_teacher_follows_the_logit_rule():
    model = nn.Module()
    model.logit_scale, model.logit_bias = nn.Parameter(torch.tensor(2.0)), nn.Parameter(torch.tensor(-3.0))
    image, text = torch.randn(3, 5), torch.randn(4, 5)
    cos = F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    softmax = zero_shot_teacher(SimpleNamespace(backbone=ClipBackbone, model=model), image, text)
    sigmoid = zero_shot_teacher(SimpleNamespace(backbone=SigmoidBackbone, model=model), image, text)
    torch.testing.assert_close(softmax, torch.e**2 * cos)
    torch.testing.assert_close(sigmoid, torch.e**2 * cos - 3.0)
    assert not sigmoid.requires_grad


def test_token_ids_from_accepts_registered_families_only(monkeypatch):
    from peft_vlprompt.backbones import FAMILIES

    with pytest.raises(
        ValueError, match=r"`token_ids_from` must be one of \('clip', 'metaclip2', 'siglip', 'siglip2', 'tokenizer'\)"
    ):
        vlp.CoOpConfig(token_ids_from="bert")
    monkeypatch.setitem(FAMILIES, "letters", LetterBackbone)  # registered after import: accepted
    assert vlp.CoOpConfig(token_ids_from="letters", placeholder_token_id=88).placeholder_token_id == 88
