"""ProGrad's gradient projection and KgCoOp's text-consistency term on any adapter (`--prograd_lambda`,
`--kgcoop_weight`), e.g. on CLIP-LoRA: neither needs prompts, only trainable tensors and the frozen model.

What they mean when both towers change (LoRA):
- ProGrad's "general direction" is the gradient, w.r.t. every trainable tensor, of the soft cross-entropy between the
  adapted model's logits and zero-shot CLIP's: the teacher logits come from the frozen model with the adapter
  disabled (its image features and the hand-crafted template's text features), not from the adapted image features.
  Per tensor, the task gradient's component that conflicts with it is projected out (`peft_vlprompt.optim.ProGrad`).
- KgCoOp's "hand-crafted features" are the frozen model's text features of the template prompts; the term keeps the
  adapted model's text features of the same prompts close to them (1 - mean cosine). It constrains the text side
  only: the LoRA-modified image features are free, unlike a prompt method where they stay frozen.
"""

import torch

from ..losses import kgcoop_loss, prograd_general_loss
from ..training.objectives import Objective, StepInputs, zero_shot_teacher

# methods whose recipe already has the term (set it through --adapter_kwargs there), or where it cannot apply
_HAS_PROGRAD = {"prograd": "its adapter's `lambda_` (--adapter_kwargs '{\"lambda_\": 0.8}')"}
_HAS_KGCOOP = {"kgcoop": "its adapter's `kg_weight` (--adapter_kwargs '{\"kg_weight\": 8.0}')"}
_NO_CLASS_TEXT = {"cocoop": "its text features depend on each image (no per-class text feature to keep close)"}


def check_regularisers(spec, args) -> None:
    """Refuse `--prograd_lambda` / `--kgcoop_weight` where they would be ignored or mean nothing (before any load)."""
    for name, own, other in (("prograd_lambda", _HAS_PROGRAD, {}), ("kgcoop_weight", _HAS_KGCOOP, _NO_CLASS_TEXT)):
        value = getattr(args, name)
        if value is None:
            continue
        if not spec.trains or spec.optimizer == "closed_form":
            raise ValueError(f"`{name}`={value!r} would be ignored: method {spec.name!r} has no gradient training")
        if spec.name in own:
            raise ValueError(f"`{name}`={value!r}: method {spec.name!r} has this term already; set {own[spec.name]}")
        if spec.name in other:
            raise ValueError(f"`{name}`={value!r} cannot apply to method {spec.name!r}: {other[spec.name]}")


class RegularisedObjective(Objective):
    """The method's objective plus ProGrad's general-direction term (`prograd_kl`, not added to the loss: the loop
    hands it to the ProGrad optimizer wrapper) and/or KgCoOp's term (`kgcoop`, added to the loss)."""

    def __init__(self, base: Objective, prograd: bool, kgcoop_weight: float | None, temperature: float = 1.0):
        self.base, self.prograd, self.kgcoop_weight, self.temperature = base, prograd, kgcoop_weight, temperature
        self.direction_terms = tuple(base.direction_terms) + (("prograd_kl",) if prograd else ())

    @property
    def needs_pixels(self) -> bool:
        return self.base.needs_pixels

    def prepare(self, classifier, vision_prompted: bool) -> None:
        super().prepare(classifier, vision_prompted)
        self.base.prepare(classifier, vision_prompted)
        self.zs_text = classifier.zero_shot_text_features()  # the template's, with every adapter disabled

    def __call__(self, inputs: StepInputs) -> dict[str, torch.Tensor]:
        terms = self.base(inputs)
        if self.prograd:
            zs_image = self.zero_shot_image_features(inputs)  # the frozen image tower when the adapter changes it
            teacher = zero_shot_teacher(inputs.classifier, zs_image, self.zs_text)
            terms |= prograd_general_loss(inputs.logits, teacher, T=self.temperature)
        if self.kgcoop_weight is not None:
            if inputs.text_features is None:
                raise ValueError("KgCoOp's term needs class text features independent of the image")
            terms |= kgcoop_loss(inputs.text_features, self.zs_text, weight=self.kgcoop_weight)
        return terms


def with_regularisers(objective: Objective, args) -> Objective:
    """`objective` with the terms `args` asks for (unchanged when none)."""
    if args.prograd_lambda is None and args.kgcoop_weight is None:
        return objective
    return RegularisedObjective(objective, args.prograd_lambda is not None, args.kgcoop_weight)
