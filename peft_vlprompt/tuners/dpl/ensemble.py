"""DPL's released text input for the training stage (`CTX_INIT "ensemble"`): the token embeddings of a class's
prompt averaged position-wise over the 60 ImageNet templates, pooled at the EOT position of the last template.

The prompt fed to the text tower is the last template with the class name (`"itap of the {class}."`), so its ids
carry the class tokens at known positions (after the template's prefix tokens, before its suffix tokens) and the EOT
position the released code pools at. `EnsembleTextEmbedding` rebuilds from them each template's sequence exactly as
`clip.tokenize` pads it (SOS, template prefix, class tokens, template suffix, EOT, zeros) and returns the mean of their
token embeddings; nothing is learned or saved.
"""

import functools

import torch
from torch import nn

from ...backbones import Backbone
from ..base import VLPromptLayer
from ..tokens import clip_token_ids

SOS_ID, EOT_ID, PAD_ID = 49406, 49407, 0  # CLIP BPE; `clip.tokenize` pads with 0


def ensemble_templates() -> list[str]:
    from ...data.templates import IMAGENET_TEMPLATES_60  # lazy: keeps the tuners importable without `data`

    return list(IMAGENET_TEMPLATES_60)


@functools.lru_cache(maxsize=4)
def template_parts(templates: tuple[str, ...]) -> tuple[tuple[tuple[int, ...], tuple[int, ...]], ...]:
    """(prefix ids, suffix ids) of each template around its `{}` (BPE splits at the spaces/"." around the name)."""
    parts = []
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"an ensemble template must contain '{{}}' once, got {template!r}")
        before, after = template.split("{}")
        parts.append((tuple(clip_token_ids(before)), tuple(clip_token_ids(after))))
    return tuple(parts)


class EnsembleTextEmbedding(VLPromptLayer):
    """Token embedding whose output is the template-ensemble average of each prompt's token embeddings.

    Input: `input_ids` (B, L) of prompts `templates[-1].format(class)`. Output (B, L, d): row b, position p is
    `mean_t E[ids_t[p]]`, where `ids_t` is template t filled with row b's class tokens, padded with 0 (or cut) to L.
    Under the causal mask, positions after the pooled EOT do not matter, so cutting at L changes nothing.
    """

    adapter_layer_names = ()
    other_param_names = ("ensemble_templates",)

    def __init__(self, base_layer: nn.Embedding, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.ensemble_templates: dict[str, tuple[str, ...]] = {}
        self.eot_index = None

    def update_layer(self, adapter_name: str, config, backbone: Backbone, key: str) -> None:
        self.ensemble_templates[adapter_name] = tuple(ensemble_templates())
        self.eot_index = backbone.eot_index
        self.set_adapter(self.active_adapters)

    def _active(self) -> str | None:
        names = self.enabled_adapters(self.ensemble_templates)
        return names[0] if names else None

    def ensemble_ids(self, input_ids: torch.Tensor, templates: tuple[str, ...]) -> torch.Tensor:
        """(T, B, L) ids of every template filled with each row's class tokens, as `clip.tokenize` pads them."""
        parts = template_parts(templates)
        prefix, suffix = parts[-1]
        eot = self.eot_index(input_ids).tolist()
        length = input_ids.shape[1]
        out = torch.full((len(parts), input_ids.shape[0], length), PAD_ID, dtype=torch.long)
        for b, row in enumerate(input_ids.tolist()):
            end = eot[b]
            start = 1 + len(prefix)
            if (
                row[1:start] != list(prefix)
                or row[end - len(suffix) : end] != list(suffix)
                or end - len(suffix) < start
            ):
                raise ValueError(
                    f"prompt {b} is not the last ensemble template {templates[-1]!r} filled with a class name; feed "
                    "`config.prompt_texts(classnames, ...)` (a class name ending in punctuation can merge with the "
                    "template's '.')"
                )
            name = row[start : end - len(suffix)]
            for t, (pre, suf) in enumerate(parts):
                ids = [SOS_ID, *pre, *name, *suf, EOT_ID][:length]
                out[t, b, : len(ids)] = torch.tensor(ids)
        return out.to(input_ids.device)

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._active()
        if name is None:
            return self.base_layer(input_ids, *args, **kwargs)
        all_ids = self.ensemble_ids(input_ids, self.ensemble_templates[name])
        total = None
        for ids in all_ids:  # one template at a time: memory stays (B, L, d)
            embeds = self.base_layer(ids, *args, **kwargs)
            total = embeds if total is None else total + embeds
        return total / all_ids.shape[0]
