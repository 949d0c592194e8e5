"""Evaluation on the protocol's test splits, sharded over processes with `gather_for_metrics`.

Frozen image features are computed once per split and reused for zero-shot CLIP and, when the adapter leaves the
image tower alone (CoOp family), for the trained model too; text features are computed once per split (eval cache).
"""

import logging

import torch
from torch.utils.data import DataLoader

from ..classifier import PromptClassifier, adapters_disabled
from ..data import collate, make_transform
from .build import EvalSplit
from .metrics import accuracy, per_class_accuracy

logger = logging.getLogger(__name__)


def make_eval_loader(split: EvalSplit, image_processor, batch_size: int, num_workers: int, accelerator):
    dataset = split.dataset.with_transform(make_transform(image_processor, train=False))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate, num_workers=num_workers)
    return accelerator.prepare_data_loader(loader)


@torch.no_grad()
def encode_images(classifier: PromptClassifier, loader, accelerator, disable_adapters: bool = False):
    """`(features [N, D] float32, labels [N])` of a whole split, gathered from every process."""
    features, labels = [], []
    for batch in loader:
        with accelerator.autocast():
            if disable_adapters:
                with adapters_disabled(classifier.model):
                    f = classifier.image_features(batch["pixel_values"])
            else:
                f = classifier.image_features(batch["pixel_values"])
        f, y = accelerator.gather_for_metrics((f.float().contiguous(), batch["labels"]))
        features.append(f.cpu())
        labels.append(y.cpu())
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def predict_conditioned(classifier: PromptClassifier, loader, accelerator):
    """`(predictions, labels)` from `classifier(pixels)`, for adapters whose text depends on the image."""
    preds, labels = [], []
    for batch in loader:
        with accelerator.autocast():
            logits = classifier(batch["pixel_values"])
        p, y = accelerator.gather_for_metrics((logits.argmax(-1), batch["labels"]))
        preds.append(p.cpu())
        labels.append(y.cpu())
    return torch.cat(preds), torch.cat(labels)


class Evaluator:
    """Scores the classifier on each split; caches the frozen image features of every split.

    Args:
        classifier: the `PromptClassifier` (its class names and template are switched per split).
        splits / loaders: the test splits and their prepared DataLoaders.
        vision_prompted: the adapter changes image features (no reuse of frozen features for the trained model).
        image_conditioned: the adapter's text depends on the image (CoCoOp): use `classifier(pixels)`.
    """

    def __init__(self, classifier, splits, loaders, accelerator, vision_prompted: bool, image_conditioned: bool):
        self.classifier, self.splits, self.loaders, self.accelerator = classifier, splits, loaders, accelerator
        self.vision_prompted, self.image_conditioned = vision_prompted, image_conditioned
        self._frozen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def _frozen_features(self, split: EvalSplit, loader):
        if split.name not in self._frozen:
            self._frozen[split.name] = encode_images(self.classifier, loader, self.accelerator, disable_adapters=True)
        return self._frozen[split.name]

    @torch.no_grad()
    def run(self, zero_shot: bool) -> dict[str, dict]:
        """`{split: {"accuracy": %, "per_class_accuracy": [...]}}` for zero-shot CLIP or the trained adapter."""
        clf = self.classifier
        was_training, classnames, template = clf.training, list(clf.classnames), clf.template
        clf.eval()
        results = {}
        try:
            for split, loader in zip(self.splits, self.loaders):
                clf.template = split.template
                clf.set_classnames(split.classnames)
                if not zero_shot and self.image_conditioned:
                    preds, labels = predict_conditioned(clf, loader, self.accelerator)
                else:
                    if zero_shot or not self.vision_prompted:
                        feats, labels = self._frozen_features(split, loader)
                    else:
                        feats, labels = encode_images(clf, loader, self.accelerator)
                    with self.accelerator.autocast():
                        text = clf.zero_shot_text_features() if zero_shot else clf.text_features()
                    logits = clf.logits(feats.to(text.device).float(), text.float())
                    preds = logits.argmax(-1).cpu()
                results[split.name] = {
                    "accuracy": accuracy(preds, labels),
                    "per_class_accuracy": per_class_accuracy(preds, labels, len(split.classnames)),
                }
                logger.info("%s %s accuracy: %.2f", "zero-shot" if zero_shot else "trained", split.name,
                            results[split.name]["accuracy"])  # fmt: skip
        finally:  # training uses the training classes
            clf.template = template
            clf.set_classnames(classnames)
            clf.train(was_training)
        return results
