"""CoOp against an independent re-statement of its text path (end/middle/front x unified/CSC x word/random init)."""

import re

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_vlprompt import CoOpConfig, PromptClassifier
from tests.reference_text import normalize, text_feature
from tests.tiny import TEXT_WIDTH, pixels, tiny_clip, tokenizer

CLASSNAMES = ["cat", "golden retriever", "sea lion"]
SOS, EOS, PERIOD = 49406, 49407, 269


def reference_logits(base, ctx: torch.Tensor, position: str, images: torch.Tensor) -> torch.Tensor:
    """CoOp's prompt assembly by hand: [SOS] ctx/class arrangement [.] [EOS], one unpadded prompt per class."""
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    feats = []
    for c, name in enumerate(CLASSNAMES):
        name_ids = tokenizer()(name, add_special_tokens=False)["input_ids"]
        class_ctx = ctx[c] if ctx.dim() == 3 else ctx
        half = class_ctx.shape[0] // 2
        parts = {
            "end": [class_ctx, emb[name_ids]],
            "front": [emb[name_ids], class_ctx],
            "middle": [class_ctx[:half], emb[name_ids], class_ctx[half:]],
        }[position]
        seq = torch.cat([emb[[SOS]], *parts, emb[[PERIOD, EOS]]])
        feats.append(text_feature(base, seq, eot_position=seq.shape[0] - 1))
    text = normalize(torch.stack(feats))
    with torch.no_grad():
        image = normalize(base.get_image_features(pixel_values=images).pooler_output)
    return base.logit_scale.exp().detach() * image @ text.T


VARIANTS = [
    (position, class_specific, ctx_init)
    for position in ("end", "middle", "front")
    for class_specific in (False, True)
    for ctx_init in (None, "a photo of a")
]


@pytest.mark.parametrize("position,class_specific,ctx_init", VARIANTS)
def test_coop_logits_match_hand_reference(position, class_specific, ctx_init):
    config = CoOpConfig(
        n_ctx=4,
        ctx_init=ctx_init,
        class_specific=class_specific,
        n_classes=len(CLASSNAMES) if class_specific else None,
        class_token_position=position,
    )
    model = get_peft_model(tiny_clip(), config)
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    with torch.no_grad():  # move away from the init so the test sees trained-looking context
        ctx.add_(0.05 * torch.randn(ctx.shape, generator=torch.Generator().manual_seed(3)))
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    expected = reference_logits(tiny_clip(), ctx.detach(), position, images)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)
    # the forward contract: plain CLIPModel call with the placeholder prompts gives the same logits
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES)
    ids = clf.tokenize(clf.prompts(config), config)
    with torch.no_grad():
        direct = model(input_ids=ids, pixel_values=images).logits_per_image
    torch.testing.assert_close(direct, expected, atol=1e-5, rtol=0)


def test_word_init_copies_token_embeddings_and_sets_n_ctx():
    config = CoOpConfig(ctx_init="a photo of a")
    assert config.n_ctx == 4 and config.ctx_init_token_ids == [320, 1125, 539, 320]
    assert CoOpConfig(n_ctx=4, ctx_init="a photo of a").n_ctx == 4  # an explicit value that agrees is fine
    model = get_peft_model(tiny_clip(), config)
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    emb = tiny_clip().text_model.embeddings.token_embedding.weight
    assert torch.equal(ctx.detach(), emb[[320, 1125, 539, 320]])


def test_padded_word_init_is_zeros_then_words():
    config = CoOpConfig(n_ctx=16, ctx_init="a photo of a", pad_ctx_init=True)
    model = get_peft_model(tiny_clip(), config)
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].detach()
    emb = tiny_clip().text_model.embeddings.token_embedding.weight
    assert ctx.shape == (16, TEXT_WIDTH)
    assert torch.equal(ctx[:12], torch.zeros(12, TEXT_WIDTH)) and torch.equal(ctx[12:], emb[[320, 1125, 539, 320]])


def test_random_init_std():
    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=16, class_specific=True, n_classes=50, init_std=0.02))
    ctx = model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]
    assert ctx.shape == (50, 16, TEXT_WIDTH)
    assert abs(ctx.std().item() - 0.02) < 0.002 and abs(ctx.mean().item()) < 0.002


@pytest.mark.parametrize("class_specific", [False, True])
def test_only_context_is_trainable_and_gets_gradients(class_specific, capsys):
    config = CoOpConfig(n_ctx=4, class_specific=class_specific, n_classes=3 if class_specific else None)
    model = get_peft_model(tiny_clip(), config)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    assert list(trainable) == ["base_model.model.text_model.embeddings.token_embedding.coop_ctx.default"]
    expected = 4 * TEXT_WIDTH * (3 if class_specific else 1)
    model.print_trainable_parameters()
    assert f"trainable params: {expected:,} " in capsys.readouterr().out
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES).train()
    loss = torch.nn.functional.cross_entropy(clf(pixels()), torch.tensor([0, 2]))
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert list(grads) == list(trainable) and grads[list(trainable)[0]].abs().sum() > 0


def test_eager_and_sdpa_agree():
    results = []
    for attn in ("eager", "sdpa"):
        model = get_peft_model(tiny_clip(attn=attn), CoOpConfig(n_ctx=4, class_token_position="middle"))
        torch.manual_seed(5)
        model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
        results.append(PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(pixels()))
    torch.testing.assert_close(results[0], results[1], atol=1e-5, rtol=0)


def test_torch_compile_has_no_graph_break_and_matches_eager():
    model = get_peft_model(tiny_clip(attn="sdpa"), CoOpConfig(n_ctx=4, class_specific=True, n_classes=3))
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES)
    ids = clf.tokenize(clf.prompts(model.peft_config["default"]), model.peft_config["default"])
    images = pixels()

    def forward(input_ids, pixel_values):
        return model(input_ids=input_ids, pixel_values=pixel_values).logits_per_image

    compiled = torch.compile(forward, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    torch.testing.assert_close(compiled(ids, images), forward(ids, images), atol=1e-5, rtol=0)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    config = CoOpConfig(n_ctx=4, class_specific=True, n_classes=3, class_token_position="front")
    model = get_peft_model(tiny_clip(), config)
    model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"].data.normal_()
    model.save_pretrained(tmp_path)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in tmp_path.iterdir()}
    saved = load_file(tmp_path / "adapter_model.safetensors")
    assert list(saved) == ["base_model.model.text_model.embeddings.token_embedding.coop_ctx"]
    assert saved["base_model.model.text_model.embeddings.token_embedding.coop_ctx"].shape == (3, 4, TEXT_WIDTH)
    loaded_config = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded_config) is CoOpConfig and loaded_config.class_token_position == "front"
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    images = pixels()
    before = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    after = PromptClassifier(reloaded, tokenizer(), CLASSNAMES).eval()(images)
    assert torch.equal(before, after)


def test_disabled_adapter_equals_base_model_exactly():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    base = tiny_clip()
    ids = tokenizer()(["a photo of a cat.", "a photo of a dog."], padding=True, return_tensors="pt")["input_ids"]
    with torch.no_grad(), model.disable_adapter():
        ours = model(input_ids=ids, pixel_values=pixels()).logits_per_image
        zero_shot = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(pixels())
    with torch.no_grad():
        theirs = base(input_ids=ids, pixel_values=pixels()).logits_per_image
    assert torch.equal(ours, theirs)
    assert torch.equal(zero_shot, PromptClassifier(base, tokenizer(), CLASSNAMES).eval()(pixels()))


def test_unload_restores_the_base_modules():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4))
    base = model.unload()
    assert type(base.text_model.embeddings.token_embedding).__name__ == "Embedding"


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(n_ctx=0), "`n_ctx` must be >= 1, got 0"),
        (
            dict(class_token_position="top"),
            "`class_token_position` must be one of ('end', 'middle', 'front'), got 'top'",
        ),
        (dict(class_specific=True), "`class_specific=True` needs `n_classes` >= 1, got `n_classes`=None"),
        (dict(n_ctx=2, ctx_init="a photo of a", pad_ctx_init=True), "has 4 words, more than `n_ctx`=2"),
    ],
)
def test_config_errors_name_field_and_value(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        CoOpConfig(**kwargs)


def test_class_count_mismatch_is_a_clear_error():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=4, class_specific=True, n_classes=5))
    with pytest.raises(ValueError, match="`n_classes`=5, but 3 class names were given"):
        PromptClassifier(model, tokenizer(), CLASSNAMES)(pixels())
    ids = tokenizer()(["X X X X cat."] * 3, return_tensors="pt")["input_ids"]
    with pytest.raises(ValueError, match="`n_classes`=5 classes but the text batch has 3 prompts"):
        model(input_ids=ids, pixel_values=pixels())


def test_prompt_longer_than_max_positions_names_the_class():
    model = get_peft_model(tiny_clip(), CoOpConfig(n_ctx=16))
    long_name = " ".join(["dog"] * 70)
    with pytest.raises(
        ValueError, match=r"the prompt for class 'dog dog .*' is 89 tokens long, more than the model's 77"
    ):
        PromptClassifier(model, tokenizer(), ["cat", long_name])(pixels())


def test_unsupported_base_model_is_a_clear_error():
    from transformers import BertConfig, BertModel

    bert = BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32))
    with pytest.raises(
        TypeError, match=r"unsupported model BertModel \(model_type 'bert'\): peft_vlprompt supports clip"
    ):
        get_peft_model(bert, CoOpConfig(n_ctx=4))
