"""SigLIP 2 (`transformers.Siglip2Model`): known, and refused until the classifier feeds NaFlex inputs.

`Siglip2VisionEmbeddings` embeds already patchified pixels, (B, patches, 3 * patch * patch), through a linear patch
embedding, with position embeddings resized to each image's `spatial_shapes`; `Siglip2Model.get_image_features`
needs `pixel_attention_mask` and `spatial_shapes` with them and has no fixed-resolution path (even the fixed-size
checkpoints are run this way by their processor). `PromptClassifier`, the pipelines and the training loop pass
images as `pixel_values` (B, 3, H, W) only, and appended vision prompts would also have to extend the pixel
attention mask. So no family is registered: `backbone_for` / `load_backbone` refuse a SigLIP 2 model with this
reason instead of the generic "unsupported model" error.
"""

from .base import REFUSED

REFUSED["siglip2"] = (
    "SigLIP 2 (Siglip2Model, model_type 'siglip2') is not supported yet: its vision tower takes patchified "
    "pixels with `pixel_attention_mask` and `spatial_shapes` (NaFlex; `get_image_features` has no fixed-resolution "
    "path), while peft_vlprompt's classifier and training loop pass only `pixel_values` images"
)
