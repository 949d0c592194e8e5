"""MetaCLIP 2 behind the backbone interface: CoOp and deep prompts on a tiny random `MetaClip2Model` (offline).

The tiny model and its XLM-V-like tokenizer (`<s>` = 0, `<pad>` = 1, `</s>` = 2) are built in
`tests/tiny_metaclip2.py`; the method x family matrix is in `tests/test_metaclip2_methods.py`.
"""

import pytest
import torch
import torch.nn.functional as F
from peft import PeftModel, get_peft_model
from transformers import MetaClip2Model

from peft_vlprompt import (
    CoCoOpConfig,
    CoOpConfig,
    DeepPromptConfig,
    PromptClassifier,
    ivlp_preset,
    maple_preset,
    promptsrc_preset,
)
from peft_vlprompt.backbones import ClipBackbone, MetaClip2Backbone, backbone_for
from peft_vlprompt.text_prefix import shared_prefix_text_features
from peft_vlprompt.tuners.tokens import leading_special_tokens
from tests.tiny import pixels
from tests.tiny_metaclip2 import MAX_LEN, PROJ, TEXT_WIDTH, VISION_WIDTH, VOCAB, tiny_metaclip2, xlmv_like_tokenizer

CLASSNAMES = ["cat", "golden retriever", "golden eagle", "sea lion"]


def test_backbone_reads_the_metaclip2_model():
    model = tiny_metaclip2(layers=3)
    b = backbone_for(model)
    assert type(b) is MetaClip2Backbone and b.family == "metaclip2"
    assert (b.text_width, b.vision_width, b.text_layers, b.vision_layers) == (TEXT_WIDTH, VISION_WIDTH, 3, 3)
    assert (b.projection_dim, b.max_positions, b.vocab_size, b.num_image_tokens) == (PROJ, MAX_LEN, VOCAB, 17)
    assert (b.text_is_causal, b.text_padding, b.vision_pooling, b.logit_rule) == (True, "longest", "cls", "softmax")
    assert model.get_submodule(b.text_attention(2)) is model.text_model.encoder.layers[2].self_attn
    assert model.get_submodule(b.text_projection) is model.text_projection
    assert leading_special_tokens(xlmv_like_tokenizer()) == 1 == b.text_start_tokens  # `<s>` only


def test_the_pooled_position_is_the_first_eos_as_the_model_pools():
    model = tiny_metaclip2()
    b = backbone_for(model)
    # `<s> a cat </s> <pad> <pad>` and a row with a word of id > 2 after the EOS: CLIP's legacy rule (eos 2 ->
    # argmax id) would pool at the largest id, MetaCLIP 2 at the first `</s>`
    ids = torch.tensor([[0, 4, 10, 2, 1, 1], [0, 2, 15, 16, 1, 1]])
    assert b.eot_index(ids).tolist() == [3, 1]
    assert ClipBackbone.eot_index(b, ids).tolist() != [3, 1]  # the difference this family exists for
    with torch.no_grad():
        out = model.text_model(input_ids=ids)
    assert torch.equal(out.pooler_output, out.last_hidden_state[torch.arange(2), b.eot_index(ids)])


def _hand_logits(base: MetaClip2Model, ctx: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
    """CoOp restated: '<s> X X X X {class} . </s>' padded with `<pad>` to the longest, positions 1..4 replaced by
    the context, causal layers, final norm, the first `</s>` through `text_projection`; logits = exp(scale) * cos."""
    tok = xlmv_like_tokenizer()
    texts = [" ".join(["X"] * ctx.shape[0] + [name + "."]) for name in CLASSNAMES]
    ids = tok(texts, padding=True, return_tensors="pt")["input_ids"]
    text = base.text_model
    x = text.embeddings.token_embedding(ids)
    x = torch.cat([x[:, :1], ctx.expand(len(CLASSNAMES), -1, -1), x[:, 1 + ctx.shape[0] :]], dim=1)
    x = x + text.embeddings.position_embedding.weight[: ids.shape[1]]
    n = ids.shape[1]
    mask = torch.full((n, n), torch.finfo(x.dtype).min).triu(1)[None, None]
    for layer in text.encoder.layers:
        x = layer(x, attention_mask=mask)
        x = x[0] if isinstance(x, tuple) else x
    eos = torch.tensor([row.index(2) for row in ids.tolist()])
    t = base.text_projection(text.final_layer_norm(x)[torch.arange(len(CLASSNAMES)), eos])
    v = base.visual_projection(base.vision_model(pixel_values=images).pooler_output)
    return base.logit_scale.exp() * F.normalize(v, dim=-1) @ F.normalize(t, dim=-1).t()


def test_coop_logits_match_a_hand_restatement():
    model = get_peft_model(tiny_metaclip2(), CoOpConfig(n_ctx=4))
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    with torch.no_grad():
        ctx.normal_()
        ours = PromptClassifier(model, xlmv_like_tokenizer(), CLASSNAMES, shared_prefix=False).eval()(pixels())
        theirs = _hand_logits(tiny_metaclip2(), ctx.detach(), pixels())
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_ctx_init_is_tokenized_with_the_models_tokenizer():
    config = CoOpConfig(ctx_init="a photo of the").tokenize_with(xlmv_like_tokenizer())
    model = get_peft_model(tiny_metaclip2(), config)
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    weight = tiny_metaclip2().text_model.embeddings.token_embedding.weight
    assert torch.equal(ctx.detach(), weight[[4, 5, 6, 7]])  # ids of "a photo of the" in the given tokenizer


def test_save_load_is_bit_identical(tmp_path):
    model = get_peft_model(tiny_metaclip2(), CoOpConfig(n_ctx=4, class_token_position="middle"))
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_metaclip2(), tmp_path)
    assert reloaded.peft_config["default"].token_ids_from == "metaclip2"
    with torch.no_grad():
        before = PromptClassifier(model, xlmv_like_tokenizer(), CLASSNAMES).eval()(pixels())
        after = PromptClassifier(reloaded, xlmv_like_tokenizer(), CLASSNAMES).eval()(pixels())
    assert torch.equal(before, after)


def test_disable_adapter_equals_the_base_model():
    model = get_peft_model(tiny_metaclip2(), CoOpConfig(n_ctx=4))
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
    base = tiny_metaclip2()
    tok = xlmv_like_tokenizer()
    ids = tok(["a photo of a cat .", "a photo of the golden eagle ."], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        with model.disable_adapter():
            ours = model(input_ids=ids, pixel_values=pixels()).logits_per_image
            zero_shot = PromptClassifier(model, tok, CLASSNAMES).eval()(pixels())
        assert torch.equal(ours, base(input_ids=ids, pixel_values=pixels()).logits_per_image)
        assert torch.equal(zero_shot, PromptClassifier(base, tok, CLASSNAMES).eval()(pixels()))


def _step(model, shared: bool):
    model.zero_grad(set_to_none=True)
    clf = PromptClassifier(model, xlmv_like_tokenizer(), CLASSNAMES, shared_prefix=shared).train()
    logits = clf(pixels(3, seed=2))
    (logits * torch.randn(logits.shape, generator=torch.Generator().manual_seed(5))).sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


SHARED_CASES = {  # a ctx_init is tokenized with the model's tokenizer: the family ships none
    "coop": lambda: CoOpConfig(n_ctx=4),
    "coop_middle": lambda: CoOpConfig(n_ctx=4, class_token_position="middle"),
    "cocoop": lambda: CoCoOpConfig(n_ctx=4).tokenize_with(xlmv_like_tokenizer()),
    "ivlp": lambda: ivlp_preset(3, depth=3).tokenize_with(xlmv_like_tokenizer()),
    "maple": lambda: maple_preset(3, depth=2).tokenize_with(xlmv_like_tokenizer()),
    "promptsrc": lambda: promptsrc_preset(3, depth=3).tokenize_with(xlmv_like_tokenizer()),
    "dpl_prefix": lambda: DeepPromptConfig(mode="prefix", text_lengths=[2, 1, 3], vision_lengths=[1, 0, 0]),
}


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("case", sorted(SHARED_CASES))
def test_the_shared_prefix_text_path_equals_the_full_tower(case, attn):
    # as tests/test_shared_prefix.py: the same adapter through the shared-prefix encoder and through transformers'
    # own MetaCLIP 2 text tower, logits and every adapter gradient
    model = get_peft_model(tiny_metaclip2(attn=attn, layers=3), SHARED_CASES[case]())
    gen = torch.Generator().manual_seed(8)  # CoCoOp's meta-net has one ReLU unit here (24 // 16): live at this seed
    with torch.no_grad():
        for _, p in sorted((n, p) for n, p in model.named_parameters() if p.requires_grad):
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    if case != "cocoop":  # CoCoOp's prompts depend on the image: the classifier checks its own path
        clf = PromptClassifier(model, xlmv_like_tokenizer(), CLASSNAMES)
        with torch.no_grad():
            ids = clf.tokenize(clf.prompts(clf.prompt_config()))
            assert shared_prefix_text_features(model, ids) is not None  # the shortcut is really taken
    (logits_s, grads_s), (logits_f, grads_f) = _step(model, True), _step(model, False)
    assert (logits_s - logits_f).abs().max() <= 1e-5 * logits_f.abs().max()
    assert grads_f and grads_s.keys() == grads_f.keys()
    for name, grad in grads_f.items():
        assert grad.abs().max() > 0, name
        assert (grads_s[name] - grad).norm() <= 1e-4 * grad.norm(), name


def test_load_backbone_takes_the_checkpoints_own_tokenizer(tmp_path):
    from transformers import CLIPImageProcessor

    from peft_vlprompt.backbones import load_backbone

    tiny_metaclip2().save_pretrained(tmp_path)
    xlmv_like_tokenizer().save_pretrained(tmp_path)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size=32).save_pretrained(tmp_path)
    model, tok, _ = load_backbone(str(tmp_path))
    assert type(backbone_for(model)) is MetaClip2Backbone
    assert tok("a photo of the cat .")["input_ids"] == [0, 4, 5, 6, 7, 10, 8, 2]  # not CLIP's BPE fallback
