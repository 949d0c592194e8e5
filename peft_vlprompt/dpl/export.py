"""Turn a searched supernet into the configuration the training stage learns: per-layer argmax of alpha ->
`DeepPromptConfig(mode="prefix", text_lengths=[...], vision_lengths=[...])`, written as `found.json`, plus the
(softmaxed) alpha of each tower in `alphas.json` for inspection."""

import json
import os
from pathlib import Path

from torch import nn

from ..tuners.dpl import alpha_logits, candidate_lengths, chosen_lengths

FOUND_FILE = "found.json"
ALPHAS_FILE = "alphas.json"


def alpha_summary(model: nn.Module, adapter_name: str = "default") -> dict:
    """Candidates, raw and softmaxed alpha (layers x candidates) of each searched tower, and the chosen lengths."""
    logits = alpha_logits(model, adapter_name)
    return {
        "candidates": candidate_lengths(model, adapter_name),
        "alpha": {tower: value.float().tolist() for tower, value in logits.items()},
        "alpha_softmax": {tower: value.float().softmax(-1).tolist() for tower, value in logits.items()},
        "chosen_lengths": chosen_lengths(model, adapter_name),
    }


def found_config(model: nn.Module, adapter_name: str = "default", **deep_prompt_kwargs):
    """The found architecture as a `DeepPromptConfig(mode="prefix", ...)` with fresh prompts to be trained.

    `deep_prompt_kwargs` set other `DeepPromptConfig` fields (e.g. the prompt initialisation). The text input is the
    released training stage's template ensemble (`text_input="ensemble"`) unless they set `text_input` or
    `text_template`.
    """
    from ..tuners.deep_prompt import DeepPromptConfig

    lengths = chosen_lengths(model, adapter_name)
    if not any(lengths["text"]) and not any(lengths["vision"]):
        raise ValueError(
            "the search chose length 0 in every layer of both towers, i.e. zero-shot CLIP: there is nothing to "
            f"train (alpha: {alpha_summary(model, adapter_name)['alpha_softmax']})"
        )
    if "text_template" not in deep_prompt_kwargs:
        deep_prompt_kwargs.setdefault("text_input", "ensemble")  # DPL's released CTX_INIT "ensemble"
    return DeepPromptConfig(
        mode="prefix", text_lengths=lengths["text"], vision_lengths=lengths["vision"], **deep_prompt_kwargs
    )


def _atomic_write_json(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def save_search_result(
    model: nn.Module, output_dir: str | os.PathLike, adapter_name: str = "default", **deep_prompt_kwargs
) -> tuple[Path, Path]:
    """Write `found.json` (the `DeepPromptConfig` as an `adapter_config.json`, which `examples/train.py --config`
    and `PeftConfig.from_pretrained` load) and `alphas.json` (`alpha_summary`). Returns both paths."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = found_config(model, adapter_name, **deep_prompt_kwargs)
    found, alphas = out / FOUND_FILE, out / ALPHAS_FILE
    _atomic_write_json(config.to_dict(), found)
    _atomic_write_json(alpha_summary(model, adapter_name), alphas)
    return found, alphas
