"""Per-method training objectives: named loss terms computed from the classifier, the batch and the logits.

An objective is called inside the training forward (so under DDP and autocast) with a `StepInputs` and returns a
dict of scalar terms. The loop sums every term except those in `direction_terms`: those only define ProGrad's
general direction and go to `ProGrad.add_general_direction`. Frozen teacher quantities (zero-shot text features,
PromptSRC's template ensemble) are computed once in `prepare`, never per step.
"""

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..classifier import PromptClassifier, adapters_disabled
from ..losses import kgcoop_loss, prograd_general_loss, promptsrc_losses, teacher_logits
from ..tuners.tokens import class_text

logger = logging.getLogger(__name__)


@dataclass
class StepInputs:
    """What an objective sees for one micro-batch.

    `image_features`/`text_features` are L2-normalised; `text_features` is None for image-conditioned methods
    (CoCoOp), whose text features depend on the image. `pixel_values` is None when training on cached features.
    """

    classifier: PromptClassifier
    logits: torch.Tensor
    labels: torch.Tensor
    image_features: torch.Tensor
    text_features: torch.Tensor | None
    pixel_values: torch.Tensor | None


class Objective:
    """Cross-entropy; subclasses add method terms.

    Attributes:
        direction_terms: names of terms that only give ProGrad's general direction (not added to the loss).
        needs_pixels: the terms need the images themselves every step (no image-feature cache).
    """

    direction_terms: tuple[str, ...] = ()
    needs_pixels: bool = False

    def prepare(self, classifier: PromptClassifier, vision_prompted: bool) -> None:
        """Compute frozen quantities once (called in eval mode, before training)."""
        self.vision_prompted = vision_prompted

    def __call__(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        return {"ce": F.cross_entropy(inputs.logits.float(), inputs.labels)}

    def zero_shot_image_features(self, inputs: StepInputs) -> torch.Tensor:
        """Frozen CLIP's image features: the step's own ones when the image tower is not prompted."""
        if not self.vision_prompted:
            return inputs.image_features.detach()
        if inputs.pixel_values is None:
            raise ValueError("this objective needs the images: do not use --cache_image_features with it")
        with torch.no_grad(), adapters_disabled(inputs.classifier.model):
            return inputs.classifier.image_features(inputs.pixel_values).detach()


def teacher_text_features(classifier: PromptClassifier, template: str | None) -> torch.Tensor:
    """Zero-shot text features with the teacher's template (the classifier's own, cached, when it is the same)."""
    if template is None or template == classifier.template:
        return classifier.zero_shot_text_features()
    return ensemble_text_features(classifier, [template])


class ProGradObjective(Objective):
    """CE, plus the soft cross-entropy to zero-shot CLIP whose gradient is ProGrad's general direction."""

    direction_terms = ("prograd_kl",)

    def __init__(self, temperature: float = 1.0, teacher_template: str | None = None) -> None:
        self.temperature, self.teacher_template = temperature, teacher_template

    def prepare(self, classifier, vision_prompted):
        super().prepare(classifier, vision_prompted)
        self.zs_text = teacher_text_features(classifier, self.teacher_template)

    def __call__(self, inputs):
        terms = super().__call__(inputs)
        teacher = zero_shot_teacher(inputs.classifier, self.zero_shot_image_features(inputs), self.zs_text)
        return terms | prograd_general_loss(inputs.logits, teacher, T=self.temperature)


class KgCoOpObjective(Objective):
    """CE + w·(1 − mean cos(text feature, zero-shot text feature))."""

    def __init__(self, weight: float = 8.0, teacher_template: str | None = None) -> None:
        self.weight, self.teacher_template = weight, teacher_template

    def prepare(self, classifier, vision_prompted):
        super().prepare(classifier, vision_prompted)
        self.zs_text = teacher_text_features(classifier, self.teacher_template)

    def __call__(self, inputs):
        if inputs.text_features is None:
            raise ValueError("KgCoOp's term needs class text features independent of the image")
        return super().__call__(inputs) | kgcoop_loss(inputs.text_features, self.zs_text, weight=self.weight)


@torch.no_grad()
def ensemble_text_features(classifier: PromptClassifier, templates: list[str]) -> torch.Tensor:
    """Zero-shot text features averaged over `templates` (unnormalised features averaged, then normalised)."""
    sums = None
    with adapters_disabled(classifier.model):
        for template in templates:
            texts = [template.format(class_text(name)) for name in classifier.classnames]
            ids = classifier.tokenize(texts).to(classifier._device())
            out = classifier.model.get_text_features(input_ids=ids)
            feats = (out.pooler_output if hasattr(out, "pooler_output") else out).float()
            sums = feats if sums is None else sums + feats
    return F.normalize(sums / len(templates), dim=-1)


class PromptSRCObjective(Objective):
    """CE + PromptSRC's self-regulating terms against frozen CLIP (text: template ensemble; image: frozen tower)."""

    needs_pixels = True

    def __init__(self, text_weight: float = 25.0, image_weight: float = 10.0, templates: list[str] | None = None):
        self.text_weight, self.image_weight, self.templates = text_weight, image_weight, templates

    def prepare(self, classifier, vision_prompted):
        super().prepare(classifier, vision_prompted)
        if self.templates is None:
            from ..data import IMAGENET_TEMPLATES_60

            self.templates = list(IMAGENET_TEMPLATES_60)
        self.zs_text = ensemble_text_features(classifier, self.templates)

    def __call__(self, inputs):
        if inputs.text_features is None:
            raise ValueError("PromptSRC's terms need class text features independent of the image")
        zs_image = self.zero_shot_image_features(inputs)
        scale = inputs.classifier.logit_scale().detach().float()
        zs_logits = scale * zs_image.float() @ self.zs_text.t()
        bias = inputs.classifier.backbone.logit_bias(inputs.classifier.model)  # the model's own rule (SigLIP)
        if bias is not None:
            zs_logits = zs_logits + bias.detach().float()
        return super().__call__(inputs) | promptsrc_losses(
            inputs.text_features, self.zs_text, inputs.image_features, zs_image, inputs.logits, zs_logits,
            text_weight=self.text_weight, image_weight=self.image_weight,
        )  # fmt: skip


def zero_shot_teacher(classifier, image_features: torch.Tensor, zs_text: torch.Tensor) -> torch.Tensor:
    """Detached zero-shot logits by the backbone's logit rule: scale·cos, plus the bias of sigmoid families (a
    constant that softmax distillation ignores, kept so the teacher is the frozen model's own logits)."""
    backbone, model = classifier.backbone, classifier.model
    teacher = teacher_logits(image_features, zs_text, backbone.log_logit_scale(model))
    bias = backbone.logit_bias(model)
    return teacher if bias is None else teacher + bias.detach().to(teacher)


def distillation_loss(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(teacher/T) ‖ softmax(logits/T)) · T², averaged over the batch."""
    log_p = F.log_softmax(logits.float() / temperature, dim=-1)
    log_q = F.log_softmax(teacher.detach().float() / temperature, dim=-1)
    return F.kl_div(log_p, log_q, reduction="batchmean", log_target=True) * temperature**2


class DistillationObjective(Objective):
    """CE + `weight` · distillation to zero-shot CLIP (DPL's optional training term; off when weight is 0)."""

    def __init__(self, weight: float = 0.0, temperature: float = 1.0) -> None:
        self.weight, self.temperature = weight, temperature

    @property
    def needs_pixels(self) -> bool:
        return self.weight > 0

    def prepare(self, classifier, vision_prompted):
        super().prepare(classifier, vision_prompted)
        self.zs_text = classifier.zero_shot_text_features() if self.weight > 0 else None

    def __call__(self, inputs):
        terms = super().__call__(inputs)
        if self.weight > 0:
            zs_image = self.zero_shot_image_features(inputs)
            teacher = zero_shot_teacher(inputs.classifier, zs_image, self.zs_text)
            terms["kd"] = self.weight * distillation_loss(inputs.logits, teacher, self.temperature)
        return terms


class RestoreObjective(Objective):
    """CE + RESTORE's feature-shift consistency (`losses.restore_losses`): the released code's prompt-Gram-norm
    ratios (`"prompt_norm"`, no extra pass) or the paper's per-block feature shift (`"features"`, two extra tower
    passes on the step's class prompts and images)."""

    def __init__(self, definition: str = "prompt_norm", weight: float = 1.0) -> None:
        self.definition, self.weight = definition, weight

    @property
    def needs_pixels(self) -> bool:
        return self.definition == "features"

    def __call__(self, inputs):
        from ..losses.restore import restore_losses

        clf = inputs.classifier
        kwargs = {}
        if self.definition == "features":
            config = clf.prompt_config()
            kwargs = {"input_ids": clf.tokenize(clf.prompts(config), config).to(inputs.logits.device),
                      "pixel_values": inputs.pixel_values}  # fmt: skip
        terms = restore_losses(clf.model, definition=self.definition, weight=self.weight, **kwargs)
        return super().__call__(inputs) | terms
