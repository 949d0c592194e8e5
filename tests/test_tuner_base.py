"""Behaviour shared by every method's tuner."""

import torch
from peft import PeftModel, get_peft_model

from peft_vlprompt import DeepPromptConfig
from tests.tiny import tiny_clip


def test_twenty_or_more_targets_are_all_wrapped_and_reload(tmp_path):
    # peft shrinks target lists of >= 20 modules into suffixes before matching; ViT-B-sized deep configs hit this
    config = DeepPromptConfig(mode="prefix", text_lengths=[2] * 12, vision_lengths=[3] * 12)
    model = get_peft_model(tiny_clip(text_layers=12, vision_layers=12), config)
    wrapped = [n for n, p in model.named_parameters() if p.requires_grad]
    assert len(wrapped) == 24, wrapped
    model.save_pretrained(tmp_path)
    reloaded = PeftModel.from_pretrained(tiny_clip(text_layers=12, vision_layers=12), tmp_path)
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items()):
        assert torch.equal(a, b), name
