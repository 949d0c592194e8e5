"""The backbone interface: everything a method, the classifier or the loop may know about a dual encoder.

A family (CLIP, SigLIP, ...) is one subclass of `Backbone` in its own file under `backbones/`, registered with
`@register`. Code outside `backbones/` asks `backbone_for(model)` (sizes, module paths, pooling, the logit rule) and
`load_backbone(path)` (loading), and never names a model class or spells a module path.
"""

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

FAMILIES: dict[str, type["Backbone"]] = {}  # family name -> its Backbone subclass, in registration order
# model_type -> why that known model cannot be supported yet (recorded by its family's file; `family_of` says it)
REFUSED: dict[str, str] = {}


def register(cls: type["Backbone"]) -> type["Backbone"]:
    """Class decorator adding a family to the registry `backbone_for` and `load_backbone` search."""
    FAMILIES[cls.family] = cls
    return cls


@dataclass(frozen=True)
class Backbone:
    """One model's sizes (instance fields) and its family's facts (class attributes and methods).

    Attributes (sizes, read from the model's config):
        text_width / vision_width: hidden sizes of the two towers.
        text_layers / vision_layers: number of encoder layers.
        projection_dim: size of the joint embedding space.
        max_positions: the text tower's maximum sequence length (77 for OpenAI CLIP).
        vocab_size: text vocabulary size.
        num_image_tokens: tokens the vision tower sees before any prompt (CLS + patches for CLIP).
        eos_token_id: the config's EOS id (used by `eot_index`).

    Class attributes (the family's facts):
        family: registry name, e.g. "clip".
        model_type: the transformers `config.model_type` values this family accepts.
        token_embedding / vision_embeddings / text_projection / visual_projection: module paths from the model root.
        text_tower_path / vision_tower_path: the towers' roots (every module under them belongs to that tower).
        encoder_layers / self_attention / pre_attention_norm: inside a tower, the encoder layers' list, a layer's
            attention and the norm before it (transformers' pre-LN layout by default; a family with another tree
            overrides them or the path methods).
        attention_projections: the papers' letter (q, k, v, o) -> linear layer name inside an attention module.
        text_pooling: "eot_argmax" (CLIP: the EOT position), "first_eos", "last" or "head" (a pooling head).
        text_is_causal: whether text attention is causal (then padding after the EOT cannot change pooled features,
            so "pad to the longest prompt" is exact; bidirectional families must pad as they were trained).
        text_padding: "longest" (any padding after the pooled token is fine) or "max_length" (pad to max_positions).
        vision_pooling: "cls" (the first token; prompts appended after the patches are ignored by pooling, so they
            need no dropping) or "head" (an attention-pooling head: appended prompts must be dropped before it).
        vision_head_input: with `vision_pooling = "head"`, the module (path from the root) that takes the last
            encoder layer's output on its way to the head (SigLIP: its post-norm); replace-mode vision prompts
            appended to the sequence are dropped at its input, so it and the head see exactly the image tokens.
        logit_rule: "softmax" (logits = scale * cos) or "sigmoid" (scale * cos + bias; `logits` adds the bias).
        placeholder_token: text standing for one learned context token in prompt strings ("X" as in CoOp).
        text_start_tokens: special tokens the family's own tokenizer puts before the text (CLIP: 1, its start token;
            SigLIP: 0). Context slots start after them; `PromptClassifier` replaces it by what its tokenizer does.
        prompt_pad_token_id: the id the family's released prompt-learning code pads token-id rows it builds itself
            with (DPL's template ensemble; OpenAI's `clip.tokenize` pads with 0), or None: the tokenizer's pad token.
    """

    text_width: int
    vision_width: int
    text_layers: int
    vision_layers: int
    projection_dim: int
    max_positions: int
    vocab_size: int
    num_image_tokens: int
    eos_token_id: int

    family: ClassVar[str] = ""
    model_type: ClassVar[tuple[str, ...]] = ()
    token_embedding: ClassVar[str] = ""
    vision_embeddings: ClassVar[str] = ""
    text_projection: ClassVar[str] = ""
    visual_projection: ClassVar[str] = ""
    text_tower_path: ClassVar[str] = ""
    vision_tower_path: ClassVar[str] = ""
    encoder_layers: ClassVar[str] = "encoder.layers"
    self_attention: ClassVar[str] = "self_attn"
    pre_attention_norm: ClassVar[str] = "layer_norm1"
    attention_projections: ClassVar[dict[str, str]] = {}
    text_pooling: ClassVar[str] = "eot_argmax"
    text_is_causal: ClassVar[bool] = True
    text_padding: ClassVar[str] = "longest"
    vision_pooling: ClassVar[str] = "cls"
    vision_head_input: ClassVar[str] = ""
    logit_rule: ClassVar[str] = "softmax"
    placeholder_token: ClassVar[str] = "X"
    text_start_tokens: ClassVar[int] = 1
    prompt_pad_token_id: ClassVar[int | None] = None

    # -- recognising and reading a model -----------------------------------------------------------------------------
    @classmethod
    def matches(cls, model: nn.Module) -> bool:
        """Whether `model` (already unwrapped) is a model of this family."""
        return getattr(getattr(model, "config", None), "model_type", None) in cls.model_type

    @classmethod
    def from_model(cls, model: nn.Module) -> "Backbone":
        raise NotImplementedError

    @classmethod
    def own_model(cls, model: nn.Module) -> nn.Module:
        """`model` unwrapped, checked to be of this family (else the error naming the supported families)."""
        inner = unwrap_model(model)
        if not cls.matches(inner):
            family_of(inner)  # raises for an unsupported model
            raise TypeError(f"{type(inner).__name__} is not a {cls.family} model: use `backbone_for(model)`")
        return inner

    # -- module paths ------------------------------------------------------------------------------------------------
    @classmethod
    def text_layer(cls, index: int) -> str:
        return f"{cls.text_tower_path}.{cls.encoder_layers}.{index}"

    @classmethod
    def vision_layer(cls, index: int) -> str:
        return f"{cls.vision_tower_path}.{cls.encoder_layers}.{index}"

    @classmethod
    def text_attention(cls, index: int) -> str:
        return f"{cls.text_layer(index)}.{cls.self_attention}"

    @classmethod
    def vision_attention(cls, index: int) -> str:
        return f"{cls.vision_layer(index)}.{cls.self_attention}"

    @classmethod
    def attention_norm(cls, attention_path: str) -> str:
        """The norm applied before the attention at `attention_path` (prefix prompts are normed by it)."""
        return f"{attention_path.rsplit('.', 1)[0]}.{cls.pre_attention_norm}"

    @classmethod
    def tower_of(cls, path: str) -> str:
        """`"text"` or `"vision"`: the tower owning the module at `path` (a projection counts with its tower)."""
        for tower, roots in (("text", (cls.text_tower_path, cls.text_projection)),
                             ("vision", (cls.vision_tower_path, cls.visual_projection))):  # fmt: skip
            if any(path == root or path.startswith(root + ".") for root in roots):
                return tower
        raise ValueError(f"{path!r} is in neither tower of a {cls.family} model")

    @classmethod
    def tower_modules(cls, model: nn.Module, tower: str) -> list[nn.Module]:
        """The modules of `tower` ("text" or "vision") including its projection (for freezing / adapter checks)."""
        root = unwrap_model(model)
        paths = (cls.text_tower_path, cls.text_projection) if tower == "text" else (
            cls.vision_tower_path, cls.visual_projection)  # fmt: skip
        return [m for path in paths for m in root.get_submodule(path).modules()]

    @classmethod
    def tower(cls, model: nn.Module, tower: str) -> nn.Module:
        """The transformer of `tower` (called with `input_ids=` / `pixel_values=`, returns hidden states)."""
        return unwrap_model(model).get_submodule(cls.text_tower_path if tower == "text" else cls.vision_tower_path)

    # -- vision input ------------------------------------------------------------------------------------------------
    def vision_inputs(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """Keyword arguments of the vision tower / `get_image_features` for (B, 3, H, W) images (what every caller
        in the package passes; a family whose tower takes another input, e.g. SigLIP 2's patches, converts here)."""
        return {"pixel_values": pixel_values}

    # -- pooling and logits ------------------------------------------------------------------------------------------
    def eot_index(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B,) position the text tower pools, exactly as the family's text model picks it."""
        raise NotImplementedError

    @classmethod
    def logit_scale(cls, model: nn.Module) -> torch.Tensor:
        """The multiplier of cosine similarities (exp of the stored log-scale)."""
        return unwrap_model(model).logit_scale.exp()

    @classmethod
    def logit_bias(cls, model: nn.Module) -> torch.Tensor | None:
        """The additive logit bias of sigmoid families, None for softmax ones."""
        return unwrap_model(model).logit_bias if cls.logit_rule == "sigmoid" else None

    # -- the text tower layer by layer (shared-prefix text encoding; None: the caller runs the whole tower) ---------
    text_attention_implementations: ClassVar[tuple[str, ...]] = ()  # attention kernels `text_prefix` reproduces

    @classmethod
    def text_tower(cls, model: nn.Module) -> "TextTower | None":
        return None

    @classmethod
    def text_layer_parts(cls, layer: nn.Module) -> "TextLayerParts | None":
        return None

    @classmethod
    def log_logit_scale(cls, model: nn.Module) -> torch.Tensor:
        """The stored log of the logit scale (what `losses.prograd.teacher_logits` exponentiates)."""
        return unwrap_model(model).logit_scale

    def layer_index(self, path: str) -> int:
        """The encoder layer owning the module at `path` (e.g. an attention wrapped by DPL), in its tower."""
        for count, layer in ((self.text_layers, self.text_layer), (self.vision_layers, self.vision_layer)):
            for i in range(count):
                if path == layer(i) or path.startswith(layer(i) + "."):
                    return i
        raise ValueError(f"{path!r} is inside no encoder layer of this {self.family} model")

    # -- tokenizer facts (configs resolve their token ids with these when the adapter is injected) -------------------
    @classmethod
    def default_tokenizer(cls):
        """The tokenizer the family's token ids are computed with when no tokenizer is given (the one shipped with
        the package), or None where the family ships none (configs then need `config.tokenize_with(tokenizer)`)."""
        return None

    @classmethod
    def token_ids(cls, text: str) -> list[int]:
        """Ids of `text` (no special tokens) in the family's default tokenizer; an error if it has none."""
        tokenizer = cls.default_tokenizer()
        if tokenizer is None:
            raise ValueError(
                f"the {cls.family} family ships no tokenizer, so {text!r} cannot be tokenized for it: call "
                "`config.tokenize_with(tokenizer)` with the model's tokenizer before creating the adapter"
            )
        return list(tokenizer(text, add_special_tokens=False)["input_ids"])

    # -- loading -----------------------------------------------------------------------------------------------------
    @classmethod
    def fixed_image_processor(cls, image_processor):
        """The processor giving the (B, 3, H, W) images the package feeds (`load_backbone` returns this one): the
        checkpoint's own by default; a family whose processor outputs something else converts it here."""
        return image_processor

    @classmethod
    def load_tokenizer(cls, path: str):
        """The family's tokenizer from `path` (a family may fall back to files shipped with the package)."""
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)


@dataclass(frozen=True)
class TextTower:
    """The text tower's parts in running order: `embeddings(input_ids=...)` (token + position embeddings, with any
    wrapper on the token embedding), the encoder `layers` (possibly wrapped), `final_norm`, then pooling at
    the family's pooled position and `projection` (possibly wrapped)."""

    embeddings: nn.Module
    token_embedding: nn.Module
    layers: tuple[nn.Module, ...]
    final_norm: nn.Module
    projection: nn.Module
    attn_implementation: str | None


@dataclass(frozen=True)
class TextLayerParts:
    """One pre-LN encoder layer: x + attention(norm1(x)), then x + mlp(norm2(x)).

    `attention` is the (possibly wrapped) `self_attn`; `attention_base` the attention module inside it, whose q/k/v/out
    projections, `num_heads`, `head_dim`, `scale` and `dropout` the caller uses. `checkpointed`: transformers'
    gradient checkpointing is on for this layer (`model.gradient_checkpointing_enable()`).
    """

    norm1: nn.Module
    attention: nn.Module
    attention_base: nn.Module
    norm2: nn.Module
    mlp: nn.Module
    checkpointed: bool


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model of a registered family inside a `PeftModel`, a tuner, a DDP/compiled wrapper, or `model` itself."""
    seen = set()
    while id(model) not in seen:
        seen.add(id(model))
        if any(family.matches(model) for family in FAMILIES.values()):
            return model
        for attr in ("_orig_mod", "module", "base_model", "model"):
            inner = getattr(model, attr, None)
            if isinstance(inner, nn.Module) and inner is not model:
                model = inner
                break
        else:
            break
    return model


def family_of(model: nn.Module) -> type[Backbone]:
    """The `Backbone` subclass of `model` (unwrapped first); a `TypeError` naming the supported families if none."""
    inner = unwrap_model(model)
    for family in FAMILIES.values():
        if family.matches(inner):
            return family
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    supported = ", ".join(f"{name} (model_type {'/'.join(f.model_type)})" for name, f in FAMILIES.items())
    if model_type in REFUSED:
        raise TypeError(f"{REFUSED[model_type]}; peft_vlprompt supports {supported}")
    raise TypeError(
        f"unsupported model {type(inner).__name__} (model_type {model_type!r}): peft_vlprompt supports {supported}; "
        "load one with `transformers.AutoModel.from_pretrained(...)`"
    )


def backbone_for(model: nn.Module) -> Backbone:
    """The `Backbone` of `model` (a supported model or a wrapper around one)."""
    return family_of(model).from_model(unwrap_model(model))


def default_family() -> type[Backbone]:
    """The family configs tokenize with before a model is seen (the first registered: CLIP); the ids are resolved
    again with the model's family when the adapter is injected into a model of another family."""
    return next(iter(FAMILIES.values()))


def attention_projections(
    text_layers: int,
    vision_layers: int,
    projections=("q", "k", "v"),
    towers=("text", "vision"),
    family: Backbone | type[Backbone] | None = None,
) -> list[str]:
    """Full module names of the attention projections `projections` (of q, k, v, o) in every layer of `towers`
    (CLIP-LoRA's targets: q/k/v of every layer of both towers) in a model of `family` (default: the first
    registered, CLIP). Full names, so peft matches exactly these."""
    family = family or next(iter(FAMILIES.values()))
    names_of = family.attention_projections
    bad = sorted(set(projections) - set(names_of)) + sorted(set(towers) - {"text", "vision"})
    if bad or not projections or not towers:
        raise ValueError(f"attention projections must be among {sorted(names_of)} and towers among "
                         f"['text', 'vision'] (neither empty), got {list(projections)} and {list(towers)}")  # fmt: skip
    names = []
    for tower in towers:
        layers, path = (text_layers, family.text_attention) if tower == "text" else (
            vision_layers, family.vision_attention)  # fmt: skip
        names += [f"{path(i)}.{names_of[p]}" for i in range(layers) for p in projections]
    return names


def load_backbone(path: str):
    """`(model, tokenizer, image_processor)` from a folder or Hub id through `AutoModel` / `AutoImageProcessor`.

    The model must be of a registered family (else the `TypeError` of `family_of`); the tokenizer comes from the
    family's `load_tokenizer` (which may fall back to files shipped with the package)."""
    from transformers import AutoImageProcessor, AutoModel

    model = AutoModel.from_pretrained(path)
    family = family_of(model)
    try:
        image_processor = AutoImageProcessor.from_pretrained(path)
    except (OSError, ValueError) as e:
        raise ValueError(
            f"`model` {path!r} has no image processor (preprocessor_config.json): save the model's processor with "
            "it, e.g. `AutoProcessor.from_pretrained(source).save_pretrained(folder)`"
        ) from e
    return model, family.load_tokenizer(path), family.fixed_image_processor(image_processor)
