"""DPL's template ensemble (`text_input="ensemble"`) tokenizes its 60 templates with the model's tokenizer.

CLIP: the ids are the ones the released code builds (`clip.tokenize`: SOS, the BPE of the template around the class
name, EOT, zero padding). A non-CLIP tokenizer (MetaCLIP 2's XLM-V layout, `<s>` = 0, `<pad>` = 1, `</s>` = 2): each
template row is what that tokenizer writes for the whole filled-in template, padded with its `<pad>`; the logits are
the text tower restated on the averaged embeddings, pooled at the first `</s>` of the last template.
"""

import pytest
import torch
from peft import PeftConfig, PeftModel, get_peft_model

from peft_vlprompt import DeepPromptConfig, PromptClassifier
from peft_vlprompt.data.templates import IMAGENET_TEMPLATES_60
from peft_vlprompt.hub import load_prompts
from peft_vlprompt.tuners.dpl.ensemble import EnsembleTextEmbedding, template_parts
from tests import reference_clip as ref
from tests.reference_text import text_feature
from tests.tiny import pixels, tiny_clip, tokenizer
from tests.tiny_metaclip2 import PAD, first_eos, template_words, tiny_metaclip2, xlmv_like_tokenizer

NAMES = ["golden retriever", "cat", "sea lion"]
SOS, EOT = 49406, 49407  # CLIP's BPE


def config():
    return DeepPromptConfig(mode="prefix", vision_lengths=[1, 0], text_input="ensemble")


def ensemble_layer(model) -> EnsembleTextEmbedding:
    (layer,) = [m for m in model.modules() if isinstance(m, EnsembleTextEmbedding)]
    return layer


def test_clip_rows_are_the_released_clip_tokenize_rows():
    model = get_peft_model(tiny_clip(), config())
    clf = PromptClassifier(model, tokenizer(), NAMES).eval()
    ids = clf.tokenize(clf.prompts(clf.prompt_config()))
    rows = ensemble_layer(model).ensemble_ids(ids, "default")
    bpe = tokenizer()
    for t, template in enumerate(IMAGENET_TEMPLATES_60):
        for b, name in enumerate(NAMES):
            want = [SOS, *bpe(template.format(name), add_special_tokens=False)["input_ids"], EOT]
            want = want + [0] * (ids.shape[1] - len(want))  # `clip.tokenize` pads with 0
            assert rows[t, b].tolist() == want[: ids.shape[1]], (template, name)


def words_model():
    tok = xlmv_like_tokenizer(
        template_words(IMAGENET_TEMPLATES_60) + ["X", "cat", "golden", "retriever", "sea", "lion"]
    )
    return tok, tiny_metaclip2(vocab=len(tok.get_vocab()))


def test_a_non_clip_tokenizer_writes_the_rows_and_the_logits_match_the_restatement():
    tok, base = words_model()
    model = get_peft_model(tiny_metaclip2(vocab=base.config.text_config.vocab_size), config().tokenize_with(tok))
    (prompt,) = [p for p in model.parameters() if p.requires_grad]  # the vision prefix prompt of layer 0
    with torch.no_grad():
        prompt.normal_(generator=torch.Generator().manual_seed(4))
    clf = PromptClassifier(model, tok, NAMES).eval()
    ids = clf.tokenize(clf.prompts(clf.prompt_config()))
    rows = ensemble_layer(model).ensemble_ids(ids, "default")
    length = ids.shape[1]
    emb = base.text_model.embeddings.token_embedding.weight.detach()
    text = []
    for b, name in enumerate(NAMES):
        written = [tok(template.format(name))["input_ids"] for template in IMAGENET_TEMPLATES_60]
        assert all(3 not in w for w in written)  # no `<unk>`: the tokenizer knows every template word
        padded = torch.tensor([(w + [PAD] * length)[:length] for w in written])
        assert torch.equal(rows[:, b], padded), name
        eos = int(first_eos(padded[-1:])[0])  # the last template's first `</s>`
        text.append(text_feature(base, emb[padded].mean(0), eot_position=eos))
    image, _ = ref.vision_forward(base, pixels(), prefix={0: prompt.detach()})
    with torch.no_grad():
        torch.testing.assert_close(clf(pixels()), ref.logits(base, torch.stack(text), image), atol=1e-5, rtol=1e-5)


def test_a_family_without_a_shipped_tokenizer_needs_tokenize_with(tmp_path):
    tok, base = words_model()
    vocab = base.config.text_config.vocab_size
    with pytest.raises(ValueError, match=r"metaclip2 family ships none: call `config.tokenize_with\(tokenizer\)`"):
        get_peft_model(tiny_metaclip2(vocab=vocab), config())
    model = get_peft_model(tiny_metaclip2(vocab=vocab), config().tokenize_with(tok))
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="ships none"):
        PeftModel.from_pretrained(tiny_metaclip2(vocab=vocab), tmp_path)
    loaded = PeftModel.from_pretrained(
        tiny_metaclip2(vocab=vocab), tmp_path, config=PeftConfig.from_pretrained(tmp_path).tokenize_with(tok)
    )
    with pytest.raises(ValueError, match="ships none"):
        load_prompts(tiny_metaclip2(vocab=vocab), tmp_path)
    pulled = load_prompts(tiny_metaclip2(vocab=vocab), tmp_path, tokenizer=tok)
    with torch.no_grad():
        before = PromptClassifier(model, tok, NAMES).eval()(pixels())
        assert torch.equal(before, PromptClassifier(loaded, tok, NAMES).eval()(pixels()))
        assert torch.equal(before, PromptClassifier(pulled, tok, NAMES).eval()(pixels()))


def test_the_tokenizer_is_not_saved_with_the_config(tmp_path):
    tok, _ = words_model()
    cfg = config().tokenize_with(tok)
    cfg.save_pretrained(tmp_path)
    assert "given_tokenizer" not in (tmp_path / "adapter_config.json").read_text()


def test_prompts_that_are_not_the_last_template_are_refused_naming_it():
    tok, base = words_model()
    model = get_peft_model(tiny_metaclip2(vocab=base.config.text_config.vocab_size), config().tokenize_with(tok))
    clf = PromptClassifier(model, tok, NAMES, template="a photo of a {}.").eval()
    ids = tok(["a photo of a cat."], return_tensors="pt")["input_ids"]  # not "itap of the cat."
    with pytest.raises(ValueError, match=r"prompt 0 is not the last ensemble template 'itap of the \{\}\.'"):
        ensemble_layer(model).ensemble_ids(ids, "default")
    with torch.no_grad():
        assert torch.isfinite(clf(pixels())).all()  # the classifier feeds the last template itself


def test_template_and_tokenizer_errors_name_the_problem():
    tok, _ = words_model()
    with pytest.raises(ValueError, match=r"must contain '\{\}' once, got 'a photo'"):
        template_parts(("a photo",), tok)
    with pytest.raises(ValueError, match="cuts each template at the placeholder 'X'"):
        template_parts(("a {}.",), SplitsX(xlmv_like_tokenizer(["X", "a", "."])))


class SplitsX:
    """A tokenizer whose placeholder "X" (id 4 here) comes out as two ids, as some vocabularies split it."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, text, add_special_tokens=True):
        ids = self.inner(text, add_special_tokens=add_special_tokens)["input_ids"]
        return {"input_ids": [i for t in ids for i in ((t, t) if t == 4 else (t,))]}
