"""SigLIP behind the backbone interface: CoOp on a tiny random `SiglipModel` (offline).

SigLIP's sentencepiece tokenizer cannot be downloaded at test time and is not shipped, so the prompts are tokenized
with the CLIP BPE shipped with the package (a vocabulary of 49408 ids, start and end tokens): the model is random,
so any tokenizer whose ids fit its vocabulary exercises the same code; its `eos_token_id` is set to CLIP's EOT.
"""

import pytest
import torch
from peft import PeftModel, get_peft_model
from transformers import SiglipModel

from peft_vlprompt import CoOpConfig, DeepPromptConfig, PromptClassifier
from peft_vlprompt.backbones import SiglipBackbone, backbone_for
from tests.tiny import pixels, tokenizer
from tests.tiny_siglip import logits_through_the_towers
from tests.tiny_siglip import tiny_siglip as tiny_siglip_model

CLASSNAMES = ["cat", "golden retriever", "x-ray"]
MAX_LEN, TEXT_WIDTH, VISION_WIDTH = 24, 32, 40


def tiny_siglip(seed: int = 0) -> SiglipModel:
    return tiny_siglip_model(seed, vocab_size=49408, eos=49407, max_len=MAX_LEN, text_width=TEXT_WIDTH)


def test_backbone_reads_the_siglip_model():
    backbone = backbone_for(tiny_siglip())
    assert type(backbone) is SiglipBackbone
    assert (backbone.text_width, backbone.vision_width, backbone.projection_dim) == (TEXT_WIDTH, VISION_WIDTH, 40)
    assert (backbone.max_positions, backbone.num_image_tokens) == (MAX_LEN, 16)  # 4x4 patches, no CLS
    assert (backbone.text_is_causal, backbone.text_padding, backbone.logit_rule) == (False, "max_length", "sigmoid")
    ids = torch.tensor([[49406, 320, 49407, 49407], [49406, 320, 1125, 539]])
    assert backbone.eot_index(ids).tolist() == [2, 3]  # first EOS; a row without one ends at the last position
    assert backbone.layer_index("vision_model.encoder.layers.1.self_attn") == 1


def _hand_logits(base: SiglipModel, ctx: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """CoOp on SigLIP restated: 'X X X X {class}.' padded to the full length, positions 1..4 replaced by the
    context, bidirectional layers without a mask, final norm, the LAST position through the head; images through
    the base vision tower; logits = exp(scale) * cos + bias."""
    texts = [" ".join(["X"] * ctx.shape[0] + [name + "."]) for name in CLASSNAMES]
    ids = tokenizer()(texts, padding="max_length", max_length=MAX_LEN, return_tensors="pt")["input_ids"]
    text = base.text_model
    x = text.embeddings.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx.expand(len(CLASSNAMES), -1, -1), x[:, 1 + ctx.shape[0] :]], dim=1)
    return logits_through_the_towers(base, x, images)


def test_coop_logits_match_a_hand_restatement():
    model = get_peft_model(tiny_siglip(), CoOpConfig(n_ctx=4))
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    with torch.no_grad():
        ctx.normal_()
        ours = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(pixels())
        theirs = _hand_logits(tiny_siglip(), ctx.detach(), pixels())
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_the_context_sees_the_class_name():
    # bidirectional text: a context slot's output depends on the class name after it (in CLIP's causal tower it
    # would not). Called directly (no classifier to say the BPE writes a start token), the CoOp layer uses SigLIP's
    # own layout, whose tokenizer adds none: the 4 context vectors replace positions 0..3 (the BPE's start token and
    # three "X"); position 1 compared here is a context slot either way, the class name is at position 5
    model = get_peft_model(tiny_siglip(), CoOpConfig(n_ctx=4))
    ids = tokenizer()(["X X X X cat.", "X X X X dog."], padding="max_length", max_length=MAX_LEN,
                      return_tensors="pt")["input_ids"]  # fmt: skip
    with torch.no_grad():
        hidden = model.base_model.model.text_model(input_ids=ids).last_hidden_state
    assert not torch.allclose(hidden[0, 1], hidden[1, 1])


def test_save_load_is_bit_identical(tmp_path):
    model = get_peft_model(tiny_siglip(), CoOpConfig(n_ctx=4, class_token_position="front"))
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_siglip(), tmp_path)
    assert reloaded.peft_config["default"].token_ids_from == "siglip"
    with torch.no_grad():
        before = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(pixels())
        after = PromptClassifier(reloaded, tokenizer(), CLASSNAMES).eval()(pixels())
    assert torch.equal(before, after)


def test_disable_adapter_equals_the_base_model():
    model = get_peft_model(tiny_siglip(), CoOpConfig(n_ctx=4))
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
    # frozen as peft leaves it: `nn.MultiheadAttention` (the pooling head) picks another kernel when its weights
    # require grad, which moves the image features by ~1e-7
    base = tiny_siglip().requires_grad_(False)
    ids = tokenizer()(["a photo of a cat.", "a photo of a dog."], padding="max_length", max_length=MAX_LEN,
                      return_tensors="pt")["input_ids"]  # fmt: skip
    with torch.no_grad():
        with model.disable_adapter():
            ours = model(input_ids=ids, pixel_values=pixels()).logits_per_image
            zero_shot = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(pixels())
        theirs = base(input_ids=ids, pixel_values=pixels()).logits_per_image
        assert torch.equal(ours, theirs)
        assert torch.equal(zero_shot, PromptClassifier(base, tokenizer(), CLASSNAMES).eval()(pixels()))


def test_ctx_init_needs_the_models_tokenizer():
    with pytest.raises(ValueError, match="siglip family ships no tokenizer.*tokenize_with"):
        get_peft_model(tiny_siglip(), CoOpConfig(ctx_init="a photo of a"))
    config = CoOpConfig(ctx_init="a photo of a").tokenize_with(tokenizer())
    model = get_peft_model(tiny_siglip(), config)
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    weight = tiny_siglip().text_model.embeddings.token_embedding.weight
    assert torch.equal(ctx.detach(), weight[[320, 1125, 539, 320]])  # "a photo of a" in the given tokenizer


def test_appended_vision_prompts_are_dropped_before_the_pooling_head():
    # what the post-norm and the head see: the 16 patches only (hand re-statement: test_siglip_vision_prompts.py)
    model = get_peft_model(tiny_siglip(), DeepPromptConfig(text_lengths=[2, 0], vision_lengths=[2, 0]))
    with torch.no_grad():
        hidden = model.base_model.model.vision_model(pixel_values=pixels(), output_hidden_states=True)
    assert hidden.hidden_states[-1].shape[1] == 16 + 2 and hidden.last_hidden_state.shape[1] == 16
