"""Load shared prompts: `load_prompts(clip_or_base, repo_or_dir)`.

`PeftModel.from_pretrained(clip, repo)` and `AutoPeftModel.from_pretrained(repo)` work directly once
`peft_vlprompt` is imported; this helper adds clear errors for the two ways that commonly fails (a method this
installation does not know, a base model of another architecture) and can load the base CLIP itself.
"""

import logging
import os

from peft import PeftConfig, PeftModel
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.utils import CONFIG_NAME
from torch import nn
from transformers import AutoModel

from ..backbones import family_of
from ..tuners.base import VLPromptConfig

logger = logging.getLogger(__name__)

_HUB_KWARGS = ("revision", "subfolder", "token", "cache_dir", "local_files_only")


def load_prompts(
    clip: nn.Module | str | os.PathLike | None,
    repo_or_dir: str | os.PathLike,
    *,
    adapter_name: str = "default",
    is_trainable: bool = False,
    tokenizer=None,
    **hub_kwargs,
) -> PeftModel:
    """Load a peft_vlprompt adapter onto a CLIP model.

    Args:
        clip: a `CLIPModel`, a Hub id / path to load one from, or `None` to load the adapter's recorded base model.
        repo_or_dir: Hub repository id or local folder holding `adapter_config.json` + `adapter_model.safetensors`.
        adapter_name: name to give the adapter.
        is_trainable: keep the prompts trainable (to continue training); otherwise the model is put in eval mode.
        tokenizer: the model's tokenizer, for a family that ships none (SigLIP, MetaCLIP 2) when the adapter
            tokenizes text at injection (DPL's template ensemble); passed to `config.tokenize_with`.
        **hub_kwargs: `revision`, `subfolder`, `token`, `cache_dir`, `local_files_only`.

    Raises:
        ValueError: the adapter uses a method this installation does not know, or its tensors do not fit `clip`
            (the message names both shapes).
    """
    unknown = set(hub_kwargs) - set(_HUB_KWARGS)
    if unknown:
        raise TypeError(f"unexpected keyword arguments {sorted(unknown)}; accepted: {list(_HUB_KWARGS)}")
    repo_or_dir = str(repo_or_dir)
    folder = os.path.join(repo_or_dir, hub_kwargs.get("subfolder") or "")
    if os.path.isdir(folder):  # peft's own reader reports a broken file without naming it
        VLPromptConfig.from_json_file(os.path.join(folder, CONFIG_NAME))
    peft_type = PeftConfig._get_peft_type(repo_or_dir, **hub_kwargs)
    config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if config_cls is None or not issubclass(config_cls, VLPromptConfig):
        raise ValueError(
            f"{repo_or_dir!r} holds a {str(peft_type).lower()!r} adapter, which is not a peft_vlprompt method known "
            "to this installation; upgrade peft_vlprompt or load it with peft directly"
        )
    config = config_cls.from_pretrained(repo_or_dir, **hub_kwargs)
    if tokenizer is not None:
        if not hasattr(config, "tokenize_with"):
            raise ValueError(f"a {str(peft_type).lower()} adapter tokenizes nothing: leave `tokenizer` unset")
        config.tokenize_with(tokenizer)
    if clip is None:
        if not config.base_model_name_or_path:
            raise ValueError(f"the adapter in {repo_or_dir!r} records no base model; pass the CLIP model as `clip`")
        clip = config.base_model_name_or_path
    if isinstance(clip, (str, os.PathLike)):
        clip = AutoModel.from_pretrained(str(clip))
        family_of(clip)  # a model of no supported family: the error lists the supported ones
    model = PeftModel.from_pretrained(
        clip, repo_or_dir, adapter_name=adapter_name, is_trainable=is_trainable, config=config, **hub_kwargs
    )
    if not is_trainable:
        model.eval()
    logger.info("loaded %s prompts from %s", str(peft_type).lower(), repo_or_dir)
    return model
