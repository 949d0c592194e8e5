"""DPL export: the one-hot supernet equals `DeepPromptConfig(mode="prefix")` with the same prompts, and the exported
`found.json` loads, trains and saves like any deep-prompt config.

Run: `python -m pytest tests/test_dpl_export.py -q`.
"""

import json

import pytest
import torch
import torch.nn.functional as F
from peft import PeftConfig, PeftModel, get_peft_model

from peft_vlprompt import DPLSearchConfig, PromptClassifier
from peft_vlprompt.dpl import FOUND_FILE, found_config, save_search_result
from peft_vlprompt.tuners.deep_prompt import DeepPromptConfig, deep_prompt_wrapper
from peft_vlprompt.tuners.dpl import chosen_lengths, chosen_prompts, supernet_layers
from tests.test_dpl_supernet import features, ref_image_features, ref_text_features, set_one_hot, token_ids
from tests.tiny import pixels, tiny_clip, tokenizer

CHOICE = {"text": [2, 0], "vision": [4, 6]}


def searched_supernet(attn="eager", share_prompts=False):
    model = get_peft_model(tiny_clip(attn=attn), DPLSearchConfig(share_prompts=share_prompts))
    for tower, lengths in CHOICE.items():
        set_one_hot(model, tower, lengths)
    return model


def prefix_model_with(prompts, attn="eager"):
    """The fixed-length prefix model of `CHOICE`, with the given prompts copied in."""
    config = DeepPromptConfig(mode="prefix", text_lengths=CHOICE["text"], vision_lengths=CHOICE["vision"])
    model = get_peft_model(tiny_clip(attn=attn), config)
    with torch.no_grad():
        for tower, per_layer in prompts.items():
            for index, p in enumerate(per_layer):
                if p is not None:
                    deep_prompt_wrapper(model, config, tower, index).deep_prompt["default"].copy_(p)
    return model


@pytest.mark.parametrize("attn,share_prompts", [("eager", False), ("sdpa", True)])
def test_one_hot_supernet_equals_deep_prompt_prefix(attn, share_prompts):
    supernet = searched_supernet(attn, share_prompts)
    prompts = chosen_prompts(supernet)
    assert [None if p is None else p.shape[0] for p in prompts["text"]] == [2, None]
    fixed = prefix_model_with(prompts, attn)
    ids = token_ids()
    mask = (torch.arange(ids.shape[1]) <= (ids == 49407).int().argmax(-1, keepdim=True)).long()
    images = pixels(2)
    got = supernet(input_ids=ids, attention_mask=mask, pixel_values=images).logits_per_image
    want = fixed(input_ids=ids, attention_mask=mask, pixel_values=images).logits_per_image
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # both equal the hand-written prefix reference
    text, image = features(fixed, ids, images)
    base = tiny_clip(attn=attn)
    options = {
        t: [[(1.0, p if p is not None else torch.zeros(0, w))] for p in prompts[t]]
        for t, w in (("text", 32), ("vision", 40))
    }
    torch.testing.assert_close(text, ref_text_features(base, ids.tolist(), options["text"]), atol=1e-5, rtol=0)
    torch.testing.assert_close(image, ref_image_features(base, images, options["vision"]), atol=1e-5, rtol=0)


def test_found_config_is_the_argmax():
    supernet = searched_supernet()
    config = found_config(supernet, init_std=0.05)
    assert isinstance(config, DeepPromptConfig)
    assert (config.mode, config.text_lengths, config.vision_lengths, config.init_std) == (
        "prefix",
        CHOICE["text"],
        CHOICE["vision"],
        0.05,
    )
    assert chosen_lengths(supernet) == CHOICE


def test_exported_config_loads_trains_and_saves(tmp_path):
    supernet = searched_supernet()
    found, alphas = save_search_result(supernet, tmp_path / "search")
    summary = json.loads(alphas.read_text())
    assert summary["chosen_lengths"] == CHOICE
    assert summary["alpha_softmax"]["vision"][1] == [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]

    config = PeftConfig.from_peft_type(**json.loads(found.read_text()))
    assert isinstance(config, DeepPromptConfig) and config.mode == "prefix"
    assert config.text_input == "ensemble"  # the released training stage's CTX_INIT "ensemble"
    assert (found.parent / FOUND_FILE) == found

    torch.manual_seed(0)
    model = get_peft_model(tiny_clip(), config)
    clf = PromptClassifier(model, tokenizer(), ["cat", "dog"])
    params = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.numel() for p in params) == 2 * 32 + (4 + 6) * 40  # fresh prompts of the found lengths only
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.1)
    clf.train()
    for step in range(2):
        loss = F.cross_entropy(clf(pixels(2, seed=step)), torch.tensor([0, 1]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(not torch.equal(p, b) for p, b in zip(params, before))

    model.save_pretrained(tmp_path / "trained")
    reloaded = PeftModel.from_pretrained(tiny_clip(), tmp_path / "trained")
    texts = config.prompt_texts(["cat", "dog"], "{}")  # the ensemble's text: the last template
    ids, images = tokenizer()(texts, padding=True, return_tensors="pt")["input_ids"], pixels(2)
    torch.testing.assert_close(
        reloaded(input_ids=ids, pixel_values=images).logits_per_image,
        model(input_ids=ids, pixel_values=images).logits_per_image,
        atol=0,
        rtol=0,
    )


def test_export_with_no_prompt_anywhere_is_a_clear_error():
    supernet = get_peft_model(tiny_clip(), DPLSearchConfig(text_candidates=[0, 2], vision_candidates=[0, 2]))
    for tower in ("text", "vision"):
        set_one_hot(supernet, tower, [0, 0])
    with pytest.raises(ValueError, match=r"^the search chose length 0 in every layer of both towers"):
        found_config(supernet)
    assert len(supernet_layers(supernet)) == 4
