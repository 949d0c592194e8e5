"""Trained prompts in `transformers.pipeline("zero-shot-image-classification")`.

Two ways, both giving `PromptClassifier`'s predictions:

* the stock pipeline with the adapter's prompt as hypothesis template: for CoOp with 4 context vectors the prompt of
  class c is exactly `"X X X X c."`, so `hypothesis_template(peft_model)` returns `"X X X X {}."`. The stock pipeline
  pads the prompts and passes an attention mask; under CLIP's causal mask the pooled end-of-text token never sees the
  padding, so the logits match (up to float rounding). It logs that `PeftModel` is not a supported class; ignore it.
  Image-conditioned prompts (CoCoOp) cannot be expressed this way.
* `prompt_pipeline(peft_model, tokenizer, image_processor)`: a pipeline subclass that builds the prompts, checks and
  caches the class features exactly like `PromptClassifier` (one text-tower pass per label set, not per image), and
  follows `set_adapter()` / `disable_adapter()` at call time.
"""

from torch import nn
from transformers import pipeline
from transformers.image_utils import load_image
from transformers.pipelines.zero_shot_image_classification import ZeroShotImageClassificationPipeline

from ..backbones import FAMILIES, unwrap_model
from ..classifier import PromptClassifier
from ..tuners.base import DEFAULT_TEMPLATE, enabled_configs

_CLASS_SENTINEL = "CLASSNAME"


def hypothesis_template(model: nn.Module, template: str = DEFAULT_TEMPLATE) -> str:
    """The `hypothesis_template` that makes the stock pipeline feed the active adapter's prompts.

    Args:
        model: a `PeftModel` with a peft_vlprompt adapter (or a plain `CLIPModel`: then `template` is returned).
        template: the hand-crafted template, used by methods that do not learn text context.
    """
    configs = enabled_configs(model)
    if not configs:
        return template
    name, config = configs[0]
    if getattr(config, "image_conditioned", False):
        raise ValueError(
            f"adapter {name!r} conditions its prompts on the image (CoCoOp), which the stock pipeline cannot do; "
            "use `prompt_pipeline(model, tokenizer, image_processor)`"
        )
    text = config.prompt_texts([_CLASS_SENTINEL], template)[0]
    if text.count(_CLASS_SENTINEL) != 1:
        raise ValueError(
            f"the prompts of adapter {name!r} cannot be written as a hypothesis template (got {text!r}); "
            "use `prompt_pipeline` instead"
        )
    return text.replace("{", "{{").replace("}", "}}").replace(_CLASS_SENTINEL, "{}")


class PromptZeroShotPipeline(ZeroShotImageClassificationPipeline):
    """Zero-shot image classification with the prompts of a peft_vlprompt adapter (see `prompt_pipeline`).

    Passing `hypothesis_template=` to a call falls back to the stock behaviour (the template is used as is).
    """

    def __init__(self, *args, template: str = DEFAULT_TEMPLATE, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.classifier = PromptClassifier(self.model, self.tokenizer, ["_"], template=template)

    def check_model_type(self, supported_models) -> None:
        # the stock check compares class names and would log an error for `PeftModel`; check what it wraps instead
        inner = unwrap_model(self.model)
        if not any(family.matches(inner) for family in FAMILIES.values()):
            super().check_model_type(supported_models)

    def preprocess(self, image, candidate_labels=None, hypothesis_template=None, timeout=None, tokenizer_kwargs=None):
        if hypothesis_template is not None:
            return super().preprocess(image, candidate_labels, hypothesis_template, timeout, tokenizer_kwargs)
        inputs = self.image_processor(images=[load_image(image, timeout=timeout)], return_tensors="pt")
        inputs = inputs.to(self.dtype)
        inputs["candidate_labels"] = list(candidate_labels)
        return inputs

    def _forward(self, model_inputs):
        if "text_inputs" in model_inputs:  # a call with an explicit hypothesis_template
            return super()._forward(model_inputs)
        labels = model_inputs.pop("candidate_labels")
        # batched calls collate one label list per image (all equal: one call has one label set)
        names = labels[0] if labels and isinstance(labels[0], (list, tuple)) else labels
        clf = self.classifier
        if clf.classnames != [str(name) for name in names]:
            clf.set_classnames(names)
        clf.train(self.model.training)
        return {"candidate_labels": labels, "logits": clf(model_inputs["pixel_values"])}


def prompt_pipeline(
    model: nn.Module,
    tokenizer,
    image_processor,
    *,
    template: str = DEFAULT_TEMPLATE,
    device=None,
    **pipeline_kwargs,
) -> PromptZeroShotPipeline:
    """`transformers.pipeline("zero-shot-image-classification")` that uses the adapter's prompts.

    Args:
        model: a `PeftModel` with a peft_vlprompt adapter (a plain `CLIPModel` gives zero-shot CLIP with `template`).
        tokenizer: the CLIP tokenizer.
        image_processor: the CLIP image processor of the base checkpoint.
        template: hand-crafted template, for methods that do not learn text context.
        device: passed to `transformers.pipeline`.

    Example:
        >>> classify = prompt_pipeline(peft_model, processor.tokenizer, processor.image_processor)
        >>> classify(image, candidate_labels=["cat", "dog"])
        [{'score': 0.93, 'label': 'cat'}, {'score': 0.07, 'label': 'dog'}]
    """
    return pipeline(
        "zero-shot-image-classification",
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        pipeline_class=PromptZeroShotPipeline,
        template=template,
        device=device,
        **pipeline_kwargs,
    )
