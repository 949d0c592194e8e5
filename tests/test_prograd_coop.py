"""ProGrad-CoOp: config, paper init (and its word-count pitfall), save/load, one training step against a hand-written
projection."""

import re

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from peft_vlprompt import ProGradCoOpConfig, PromptClassifier, losses, make_prograd_optimizer
from peft_vlprompt.optim import ProGrad
from tests.reference_text import normalize, text_feature
from tests.tiny import TEXT_WIDTH, pixels, tiny_clip, tokenizer

CLASSNAMES = ["cat", "golden retriever", "sea lion", "dog"]
SOS, EOS, PERIOD = 49406, 49407, 269
PHRASE = [320, 1125, 539, 320]  # "a photo of a"
CTX_KEY = "base_model.model.text_model.embeddings.token_embedding.coop_ctx"


def context(model) -> torch.nn.Parameter:
    return model.base_model.model.text_model.embeddings.token_embedding.coop_ctx["default"]


def test_default_is_prograds_init_12_zeros_then_a_photo_of_a():
    config = ProGradCoOpConfig()
    assert (config.n_ctx, config.ctx_init, config.pad_ctx_init) == (16, "a photo of a", True)
    assert (config.lambda_, config.temperature, config.teacher_template) == (1.0, 1.0, "a photo of a {}.")
    ctx = context(get_peft_model(tiny_clip(), config)).detach()
    emb = tiny_clip().text_model.embeddings.token_embedding.weight
    assert ctx.shape == (16, TEXT_WIDTH)
    assert torch.equal(ctx[:12], torch.zeros(12, TEXT_WIDTH)) and torch.equal(ctx[12:], emb[PHRASE])


def test_paper_init_counts_words_by_default_and_bpe_tokens_on_request():
    template = "a type of pet, a photo of a {}."  # 8 words, 9 BPE tokens ("pet," is two)
    phrase_ids = [320, 3877, 539, 3703, 267, 320, 1125, 539, 320]
    words = ProGradCoOpConfig.paper_init(template, lambda_=0.8)
    assert (words.teacher_template, words.lambda_, words.n_ctx, words.ctx_init_split) == (template, 0.8, 16, "words")
    assert words.ctx_init_token_ids == phrase_ids and words.n_init == 8 and words.frozen_init_token_ids == [320]
    # released prompt text: 8 placeholders, then the whole phrase (its first 8 tokens are context slots)
    assert words.prompt_texts(["cat"], template) == [" ".join(["X"] * 8) + " a type of pet, a photo of a cat."]
    bpe = ProGradCoOpConfig.paper_init(template, split_by_words=False)
    assert (bpe.ctx_init_split, bpe.n_init, bpe.frozen_init_token_ids) == ("tokens", 9, [])
    assert bpe.prompt_texts(["cat"], template) == [" ".join(["X"] * 16) + " cat."]
    assert ProGradCoOpConfig.paper_init().frozen_init_token_ids == []  # one token per word: nothing frozen


def test_legacy_frozen_suffix_config_keeps_its_layout():
    """Configs saved before `ctx_init_split` (learned part in `ctx_init`, the rest in `frozen_suffix`) load as saved."""
    legacy = ProGradCoOpConfig(n_ctx=16, ctx_init="a type of pet, a photo of", pad_ctx_init=True, frozen_suffix="a")
    assert legacy.ctx_init_split == "tokens" and legacy.n_init == 8
    assert legacy.prompt_texts(["cat"], "{}") == [" ".join(["X"] * 16) + " a cat."]


def test_word_split_prompt_matches_hand_assembly():
    """ProGrad's released prompt: [SOS] 8 zeros, 8 phrase tokens (learned) [a] (frozen) [class] [.] [EOS]."""
    config = ProGradCoOpConfig.paper_init("a type of pet, a photo of a {}.")
    model = get_peft_model(tiny_clip(), config)
    ctx = context(model).detach()
    emb = tiny_clip().text_model.embeddings.token_embedding.weight.detach()
    assert torch.equal(ctx[:8], torch.zeros(8, TEXT_WIDTH)) and torch.equal(
        ctx[8:], emb[[320, 3877, 539, 3703, 267, 320, 1125, 539]]
    )
    images = pixels()
    logits = PromptClassifier(model, tokenizer(), CLASSNAMES, template=config.teacher_template).eval()(images)
    base = tiny_clip()
    feats = []
    for name in CLASSNAMES:
        name_ids = tokenizer()(name, add_special_tokens=False)["input_ids"]
        seq = torch.cat([emb[[SOS]], ctx, emb[[320] + name_ids + [PERIOD, EOS]]])
        feats.append(text_feature(base, seq, eot_position=seq.shape[0] - 1))
    with torch.no_grad():
        image = normalize(base.get_image_features(pixel_values=images).pooler_output)
    expected = base.logit_scale.exp().detach() * image @ normalize(torch.stack(feats)).T
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=0)


def test_save_load_round_trip_is_bit_identical(tmp_path):
    config = ProGradCoOpConfig.paper_init(
        "a type of pet, a photo of a {}.", n_ctx=12, split_by_words=True, lambda_=0.8, temperature=2.0
    )
    model = get_peft_model(tiny_clip(), config)
    context(model).data.normal_(generator=torch.Generator().manual_seed(2))
    model.save_pretrained(tmp_path)
    assert list(load_file(tmp_path / "adapter_model.safetensors")) == [CTX_KEY]
    loaded = PeftConfig.from_pretrained(tmp_path)
    assert type(loaded) is ProGradCoOpConfig
    assert (loaded.n_ctx, loaded.lambda_, loaded.temperature, loaded.ctx_init_split) == (12, 0.8, 2.0, "words")
    assert loaded.frozen_init_token_ids == [320]
    assert loaded.teacher_template == "a type of pet, a photo of a {}."
    assert loaded.ctx_init_token_ids == config.ctx_init_token_ids
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path)
    images = pixels()
    before = PromptClassifier(model, tokenizer(), CLASSNAMES).eval()(images)
    after = PromptClassifier(reloaded, tokenizer(), CLASSNAMES).eval()(images)
    assert torch.equal(before, after)


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, T: float) -> torch.Tensor:
    return -(F.softmax(teacher / T, -1) * F.log_softmax(student / T, -1)).sum(-1).mean() * T * T


def test_training_step_projects_the_task_gradient_and_changes_only_the_context():
    config = ProGradCoOpConfig(n_ctx=8, lambda_=0.9, temperature=2.0)
    model = get_peft_model(tiny_clip(), config)
    ctx = context(model)
    clf = PromptClassifier(model, tokenizer(), CLASSNAMES, template=config.teacher_template).train()
    images = pixels(batch=4)
    image = clf.image_features(images)
    zero_shot = clf.zero_shot_text_features()
    teacher = losses.teacher_logits(image, zero_shot, clf.clip.logit_scale)
    labels = teacher.argmin(-1)  # the task pulls away from the teacher: the two directions conflict

    # the hand-written ProGrad update: G_d - lambda * (G_d . g) g when G_d . G_g < 0, g = G_g / |G_g|, then SGD
    student = clf.logits(image, clf.text_features())
    g_d = torch.autograd.grad(F.cross_entropy(student, labels), ctx, retain_graph=True)[0].flatten()
    g_g = torch.autograd.grad(soft_cross_entropy(student, teacher, 2.0), ctx)[0].flatten()
    assert g_d @ g_g < 0
    unit = g_g / g_g.norm()
    projected = g_d - 0.9 * (g_d @ unit) * unit
    lr = 0.05
    expected = ctx.detach() - lr * projected.view_as(ctx)

    frozen = {k: v.clone() for k, v in model.state_dict().items() if "coop_ctx" not in k}
    optimizer = make_prograd_optimizer(torch.optim.SGD([ctx], lr=lr), config)
    assert isinstance(optimizer, ProGrad) and optimizer.lambda_ == 0.9
    text_calls = []
    hook = model.base_model.model.text_model.embeddings.register_forward_hook(lambda *args: text_calls.append(1))
    assert clf.zero_shot_text_features() is zero_shot  # cached teacher: no text-tower call
    student = clf.logits(image, clf.text_features())
    general = losses.prograd_general_loss(student, teacher, T=config.temperature)
    optimizer.add_general_direction(general["prograd_kl"])  # before backward of the task loss
    F.cross_entropy(student, labels).backward()
    optimizer.step()
    optimizer.zero_grad()
    hook.remove()
    assert len(text_calls) == 1  # the student's text pass only
    assert optimizer.last_stats["prograd/projected_fraction"] == 1.0
    torch.testing.assert_close(ctx.detach(), expected, atol=1e-6, rtol=0)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in frozen.items())


@pytest.mark.parametrize(
    "kwargs,error,message",
    [
        (dict(lambda_=-0.5), ValueError, "`lambda_` must be a finite number >= 0, got -0.5"),
        (dict(lambda_="1"), TypeError, "`lambda_` must be a float, got str"),
        (dict(temperature=0.0), ValueError, "`temperature` must be a finite number > 0, got 0.0"),
        (dict(teacher_template="a photo"), ValueError, "`teacher_template` must contain '{}'"),
        (dict(n_ctx=2), ValueError, "has 4 words, more than `n_ctx`=2"),
        (
            dict(frozen_suffix="a", class_token_position="middle"),
            ValueError,
            "`frozen_suffix` needs `class_token_position='end'`",
        ),
    ],
)
def test_config_errors_name_field_and_value(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        ProGradCoOpConfig(**kwargs)


def test_paper_init_needs_a_template_ending_with_the_class():
    with pytest.raises(ValueError, match=re.escape("must end with ' {}.'")):
        ProGradCoOpConfig.paper_init("{} texture.")


def test_make_prograd_optimizer_needs_a_prograd_config():
    from peft_vlprompt import CoOpConfig

    with pytest.raises(TypeError, match="`config` must be a ProGradCoOpConfig, got CoOpConfig"):
        make_prograd_optimizer(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1), CoOpConfig())
