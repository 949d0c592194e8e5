"""SigLIP 2 is refused, with its reason, wherever a model enters the package (offline, tiny random `Siglip2Model`).

The reason is checked against transformers itself: `Siglip2Model.get_image_features` cannot embed the (B, 3, H, W)
images the classifier passes, and embeds the patchified NaFlex input with `spatial_shapes`.
"""

import pytest
import torch
from peft import get_peft_model
from torch import nn
from transformers import Siglip2Config, Siglip2Model

from peft_vlprompt import CoOpConfig
from peft_vlprompt.backbones import FAMILIES, backbone_for, load_backbone

PATCH, SIDE = 8, 4  # a 4x4 grid of 8x8 patches (32x32 images)
REFUSAL = (
    r"SigLIP 2 \(Siglip2Model, model_type 'siglip2'\) is not supported yet: .*pixel_attention_mask.*spatial_shapes"
    r".*; peft_vlprompt supports clip \(model_type clip\)"
)


def tiny_siglip2() -> Siglip2Model:
    torch.manual_seed(0)
    config = Siglip2Config(
        text_config=dict(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, max_position_embeddings=16, projection_size=32),
        vision_config=dict(num_patches=SIDE * SIDE, patch_size=PATCH, hidden_size=32, intermediate_size=64,
                           num_hidden_layers=1, num_attention_heads=4),
    )  # fmt: skip
    return Siglip2Model(config).eval()


class _Wrapper(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model


def test_the_classifiers_image_input_does_not_reach_siglip2_image_features():
    model = tiny_siglip2()
    images = torch.randn(2, 3, PATCH * SIDE, PATCH * SIDE)
    with torch.no_grad(), pytest.raises((RuntimeError, TypeError, ValueError)):  # what `PromptClassifier` would call
        model.get_image_features(pixel_values=images)
    # the NaFlex input, patchified by hand (row-major patches, channels last inside a patch), is what it takes
    patches = images.reshape(2, 3, SIDE, PATCH, SIDE, PATCH).permute(0, 2, 4, 3, 5, 1).reshape(2, SIDE * SIDE, -1)
    with torch.no_grad():
        out = model.get_image_features(
            pixel_values=patches,
            pixel_attention_mask=torch.ones(2, SIDE * SIDE, dtype=torch.long),
            spatial_shapes=torch.tensor([[SIDE, SIDE]] * 2),
        )
    assert out.pooler_output.shape == (2, 32)


def test_siglip2_is_refused_with_its_reason(tmp_path):
    assert "siglip2" not in FAMILIES and all(f.matches(tiny_siglip2()) is False for f in FAMILIES.values())
    with pytest.raises(TypeError, match=REFUSAL):
        backbone_for(tiny_siglip2())
    with pytest.raises(TypeError, match=REFUSAL):
        backbone_for(_Wrapper(tiny_siglip2()))  # inside a wrapper, as in a PeftModel
    with pytest.raises(TypeError, match=REFUSAL):
        get_peft_model(tiny_siglip2(), CoOpConfig(n_ctx=4))
    tiny_siglip2().save_pretrained(tmp_path)
    with pytest.raises(TypeError, match=REFUSAL):  # `--model <siglip2 checkpoint>`: before the processor is looked at
        load_backbone(str(tmp_path))
