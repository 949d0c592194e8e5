"""Sharing prompts on the Hub: model cards, push, pull, and the zero-shot pipeline.

>>> from peft_vlprompt.hub import push_prompts, load_prompts, prompt_pipeline
>>> push_prompts(peft_model, "me/coop-caltech101", results=all_results, training_config=vars(args))
>>> model = load_prompts(CLIPModel.from_pretrained(base), "me/coop-caltech101")
>>> prompt_pipeline(model, tokenizer, image_processor)(image, candidate_labels=["cat", "dog"])
"""

from .cards import render_card
from .methods import METHOD_CARDS, MethodCard
from .pipeline import PromptZeroShotPipeline, hypothesis_template, prompt_pipeline
from .pull import load_prompts
from .push import push_prompts, save_prompts_with_card

__all__ = [
    "METHOD_CARDS",
    "MethodCard",
    "PromptZeroShotPipeline",
    "hypothesis_template",
    "load_prompts",
    "prompt_pipeline",
    "push_prompts",
    "render_card",
    "save_prompts_with_card",
]
