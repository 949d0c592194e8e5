"""DPL's released text input for the training stage (`CTX_INIT "ensemble"`): the token embeddings of a class's
prompt averaged position-wise over the 60 ImageNet templates, pooled at the EOT position of the last template.

The prompt fed to the text tower is the last template with the class name (`"itap of the {class}."`), so its ids
carry the class tokens at known positions (after the template's prefix tokens, before its suffix tokens) and the EOT
position the released code pools at. `EnsembleTextEmbedding` rebuilds from them each template's sequence exactly as
the tokenizer writes it (start tokens, template prefix, class tokens, template suffix, end tokens, padding) and
returns the mean of their token embeddings; nothing is learned or saved.

The templates are tokenized with the model's family's tokenizer (`backbone.default_tokenizer()`, CLIP's BPE for
CLIP), or with the tokenizer given to `config.tokenize_with(tokenizer)` (required for a family that ships none, e.g.
MetaCLIP 2 or SigLIP). Padding uses `backbone.prompt_pad_token_id` (0 for CLIP, as `clip.tokenize` pads in the
released code), else the tokenizer's pad token.
"""

import functools

import torch
from torch import nn

from ...backbones import Backbone
from ..base import VLPromptLayer
from ..tokens import PLACEHOLDER_TOKEN, leading_special_tokens


def ensemble_templates() -> list[str]:
    from ...data.templates import IMAGENET_TEMPLATES_60  # lazy: keeps the tuners importable without `data`

    return list(IMAGENET_TEMPLATES_60)


Parts = tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], tuple[int, ...]]


def template_parts(templates: tuple[str, ...], tokenizer) -> tuple[Parts, ...]:
    """(start ids, prefix ids, suffix ids, end ids) of each template around its `{}` in `tokenizer`.

    Each template is tokenized whole with the placeholder word in the class name's place (so the words around the
    name are split as they are next to a name, whatever the tokenizer's pre-tokenization), and cut at the
    placeholder's one id; start/end ids are the special tokens the tokenizer adds around text."""
    placeholder = list(tokenizer(PLACEHOLDER_TOKEN, add_special_tokens=False)["input_ids"])
    if len(placeholder) != 1:
        raise ValueError(
            f"`text_input='ensemble'` cuts each template at the placeholder {PLACEHOLDER_TOKEN!r}, but the tokenizer "
            f"splits it into {placeholder}; use a tokenizer with a one-token {PLACEHOLDER_TOKEN!r}"
        )
    start = leading_special_tokens(tokenizer)
    parts = []
    for template in templates:
        if template.count("{}") != 1:
            raise ValueError(f"an ensemble template must contain '{{}}' once, got {template!r}")
        text = template.format(PLACEHOLDER_TOKEN)
        plain = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        full = list(tokenizer(text)["input_ids"])
        if plain.count(placeholder[0]) != 1 or full[start : start + len(plain)] != plain:
            raise ValueError(
                f"the tokenizer does not keep {PLACEHOLDER_TOKEN!r} one token in the ensemble template {template!r} "
                f"({plain}), so the class name's place in it is unknown"
            )
        cut = plain.index(placeholder[0])
        parts.append(
            (tuple(full[:start]), tuple(plain[:cut]), tuple(plain[cut + 1 :]), tuple(full[start + len(plain) :]))
        )
    return tuple(parts)


@functools.lru_cache(maxsize=4)
def default_template_parts(backbone_class: type[Backbone], templates: tuple[str, ...]) -> tuple[Parts, ...]:
    """`template_parts` in the family's shipped tokenizer (cached: every injection of a family tokenizes alike)."""
    return template_parts(templates, backbone_class.default_tokenizer())


def pad_token_id(backbone: Backbone, tokenizer) -> int:
    """The id rows are padded with: the family's released rule, else the tokenizer's pad token."""
    pad = backbone.prompt_pad_token_id
    if pad is None:
        pad = getattr(tokenizer, "pad_token_id", None)
    if pad is None:
        raise ValueError(
            f"`text_input='ensemble'` pads the shorter templates, but the {backbone.family} family names no pad id "
            "and the tokenizer has no pad token: give `config.tokenize_with` a tokenizer with a pad token"
        )
    return pad


class EnsembleTextEmbedding(VLPromptLayer):
    """Token embedding whose output is the template-ensemble average of each prompt's token embeddings.

    Input: `input_ids` (B, L) of prompts `templates[-1].format(class)`. Output (B, L, d): row b, position p is
    `mean_t E[ids_t[p]]`, where `ids_t` is template t filled with row b's class tokens, padded (or cut) to L.
    Under the causal mask, positions after the pooled EOT do not matter, so cutting at L changes nothing.
    """

    adapter_layer_names = ()
    other_param_names = ("ensemble_templates", "ensemble_parts", "ensemble_pad_ids")

    def __init__(self, base_layer: nn.Embedding, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.ensemble_templates: dict[str, tuple[str, ...]] = {}
        self.ensemble_parts: dict[str, tuple[Parts, ...]] = {}
        self.ensemble_pad_ids: dict[str, int] = {}
        self.eot_index = None

    def update_layer(self, adapter_name: str, config, backbone: Backbone, key: str) -> None:
        templates = tuple(ensemble_templates())
        tokenizer = getattr(config, "given_tokenizer", None)
        if tokenizer is not None:
            parts = template_parts(templates, tokenizer)
        elif backbone.default_tokenizer() is not None:
            tokenizer = backbone.default_tokenizer()
            parts = default_template_parts(type(backbone), templates)
        else:
            raise ValueError(
                f"`text_input='ensemble'` tokenizes DPL's {len(templates)} templates with the model's tokenizer, and "
                f"the {backbone.family} family ships none: call `config.tokenize_with(tokenizer)` first (loading a "
                "saved adapter: `PeftModel.from_pretrained(model, path, config=PeftConfig.from_pretrained(path)"
                ".tokenize_with(tokenizer))`), or use `text_input='template'`"
            )
        self.ensemble_templates[adapter_name] = templates
        self.ensemble_parts[adapter_name] = parts
        self.ensemble_pad_ids[adapter_name] = pad_token_id(backbone, tokenizer)
        self.eot_index = backbone.eot_index
        self.set_adapter(self.active_adapters)

    def _active(self) -> str | None:
        names = self.enabled_adapters(self.ensemble_templates)
        return names[0] if names else None

    def ensemble_ids(self, input_ids: torch.Tensor, name: str) -> torch.Tensor:
        """(T, B, L) ids of every template of adapter `name` filled with each row's class tokens, padded as the
        family's released code pads them."""
        parts, templates = self.ensemble_parts[name], self.ensemble_templates[name]
        first, prefix, suffix, _ = parts[-1]
        eot = self.eot_index(input_ids).tolist()
        length = input_ids.shape[1]
        out = torch.full((len(parts), input_ids.shape[0], length), self.ensemble_pad_ids[name], dtype=torch.long)
        start = len(first) + len(prefix)
        for b, row in enumerate(input_ids.tolist()):
            end = eot[b]
            if (
                row[: len(first)] != list(first)
                or row[len(first) : start] != list(prefix)
                or row[end - len(suffix) : end] != list(suffix)
                or end - len(suffix) < start
            ):
                raise ValueError(
                    f"prompt {b} is not the last ensemble template {templates[-1]!r} filled with a class name; feed "
                    "`config.prompt_texts(classnames, ...)` tokenized with the tokenizer the adapter was built with "
                    "(a class name ending in punctuation can merge with the template's '.')"
                )
            name_ids = row[start : end - len(suffix)]
            for t, (sos, pre, suf, eos) in enumerate(parts):
                ids = [*sos, *pre, *name_ids, *suf, *eos][:length]
                out[t, b, : len(ids)] = torch.tensor(ids)
        return out.to(input_ids.device)

    def forward(self, input_ids: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        name = self._active()
        if name is None:
            return self.base_layer(input_ids, *args, **kwargs)
        all_ids = self.ensemble_ids(input_ids, name)
        total = None
        for ids in all_ids:  # one template at a time: memory stays (B, L, d)
            embeds = self.base_layer(ids, *args, **kwargs)
            total = embeds if total is None else total + embeds
        return total / all_ids.shape[0]
