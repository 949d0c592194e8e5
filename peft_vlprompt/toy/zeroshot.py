"""Zero-shot evaluation of a dual encoder on toy splits (self-contained: used to measure and pin the toy models)."""

import torch

from ..backbones import backbone_for


@torch.no_grad()
def zero_shot_accuracy(
    model,
    processor,
    dataset,
    classnames: list[str] | None = None,
    template: str = "a photo of a {}.",
    batch_size: int = 256,
) -> float:
    """Top-1 accuracy (in %) of `argmax_c cos(image, text(template.format(c)))` on `dataset`.

    Args:
        model: a supported dual encoder (e.g. a `CLIPModel`, the toy SigLIP).
        processor: its processor (tokenizer + image processor), as a user would call it; text is padded as the
            family was trained (to the longest prompt for CLIP, to the full length for SigLIP).
        dataset: a `datasets.Dataset` with `image` and `label` columns (e.g. a split of `toy_splits`).
        classnames (`list[str]`, *optional*): defaults to the `label` feature's names.
        template (`str`): prompt with `{}` for the class name.
        batch_size (`int`): images per forward pass.
    """
    classnames = classnames or dataset.features["label"].names
    model.eval()
    padding = "max_length" if backbone_for(model).text_padding == "max_length" else True
    text = processor.tokenizer([template.format(c) for c in classnames], padding=padding, return_tensors="pt")
    text_features = model.get_text_features(**text)
    text_features = getattr(text_features, "pooler_output", text_features)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    correct = 0
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        pixels = processor.image_processor(images=batch["image"], return_tensors="pt")["pixel_values"]
        image_features = model.get_image_features(pixel_values=pixels)
        image_features = getattr(image_features, "pooler_output", image_features)
        pred = (image_features @ text_features.t()).argmax(-1)
        correct += (pred == torch.tensor(batch["label"])).sum().item()
    return 100.0 * correct / len(dataset)
