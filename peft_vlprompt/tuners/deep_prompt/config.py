"""Deep prompts in both CLIP towers, with one length per layer (IVLP, VPT-deep, deep language prompting, MaPLe, DPL's
prefix prompts), and PromptSRC's config (Khattak et al., ICCV'23), which is IVLP plus loss settings."""

from dataclasses import dataclass, field

from ...backbones import Backbone
from ..base import VLPromptConfig
from ..tokens import PLACEHOLDER_TOKEN, TokenIdsMixin, class_text, ctx_init_token_ids_field, token_ids_from_field

MODES = ("replace", "prefix")
TEXT_INPUTS = ("template", "ensemble")
COUPLINGS = ("none", "maple")
TOWERS = ("text", "vision")
_LENGTHS = {"item_min": 0, "items": "lengths"}  # validation rule of the per-layer length lists (`_validation`)


@dataclass(frozen=True)
class LayerSpec:
    """What one wrapped module does for one adapter (derived from the config and the backbone, never saved).

    Attributes:
        tower: `"text"` or `"vision"`.
        index: entry of `text_lengths` / `vision_lengths` (0 = the input, i = layer i).
        kind: `"embedding"` (index 0 in replace mode), `"layer"` (replace mode, index >= 1), `"attention"` (prefix)
            or `"drop"` (vision replace mode on an attention-pooling family: the module before the pooling head,
            index = the number of layers, holding no prompts).
        length: number of prompt vectors.
        width: hidden size of the tower.
        carried: vision replace mode only: prompt tokens the incoming sequence carries from earlier layers (dropped
            here before the new prompts are appended, or before the pooling head for `"drop"`).
        coupled: the prompts are a learned projection of the text prompts of the same index (MaPLe).
    """

    tower: str
    index: int
    kind: str
    length: int
    width: int
    carried: int = 0
    coupled: bool = False


def _check_lengths(name: str, lengths) -> list[int] | None:
    if lengths is None:
        return None
    if isinstance(lengths, (str, bytes)) or not hasattr(lengths, "__iter__"):
        raise TypeError(f"`{name}` must be a list of ints (one per layer), got {type(lengths).__name__}")
    lengths = list(lengths)
    for i, value in enumerate(lengths):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"`{name}` must contain ints, got {value!r} at index {i}")
        if value < 0:
            raise ValueError(f"`{name}` must contain lengths >= 0, got {value} at index {i}")
    return lengths or None


@dataclass
class DeepPromptConfig(TokenIdsMixin, VLPromptConfig):
    """Learnable prompts at any subset of layers of both CLIP encoders, each layer with its own length.

    Index 0 of `text_lengths` is the input context (right after BOS); index 0 of `vision_lengths` is appended after
    the patch embeddings; index i >= 1 is the prompt of encoder layer i. Each list has one entry per layer of its
    tower (checked against the model); 0 means "no prompt at this layer".

    `mode="replace"` (IVLP, VPT-deep, MaPLe):
        - Text: the prompt text is `"X X ... X {class}."` with `max(text_lengths)` placeholder slots (or `ctx_init` +
          class, see below). Index 0 replaces the token embeddings of slots 1..n_0 (before the positional
          embedding); layer i replaces the hidden states of slots 1..n_i before the layer. Slots not covered keep what
          they had: at the input the frozen placeholder embedding, deeper the previous layer's output (so with
          n_i < n_0 the slots n_i+1..n_0 carry their outputs forward, and a layer with n_i = 0 changes nothing). The
          sequence length and EOT pooling never change; the class name may contain any word.
        - Vision: index 0 appends n_0 tokens after CLS+patches, without positional embedding, before
          `pre_layrnorm` (as MaPLe). Layer i with n_i > 0 drops the prompt outputs carried from earlier layers and
          appends its own n_i prompts; a layer with n_i = 0 carries the earlier prompt outputs forward (MaPLe's
          behaviour past its prompt depth). CLS pooling is untouched; on attention-pooling families
          (`vision_pooling="head"`, SigLIP) the appended prompts are dropped before the pooling head, which sees
          exactly the image tokens (the prompts act through the attention of the image tokens to them).
    `mode="prefix"` (DPL): layer i's n_i prompts are extra keys/values of its attention only:
        K/V = k/v_proj(LN1([x ; P_i])), Q = q_proj(LN1(x)); every token (SOS included) may attend to every prompt,
        real tokens keep their causal/padding mask; sequence and pooling are untouched. Index 0 is layer 0.
    `coupling="maple"`: vision prompts of index i are `Linear_i(text prompts of index i)` (text_width ->
    vision_width); the linear layers are learned, the vision tower owns no prompts of its own.

    Args:
        text_lengths (`list[int]`, *optional*): prompt length per text layer (`None` = no text prompts).
        vision_lengths (`list[int]`, *optional*): prompt length per vision layer (`None` = no vision prompts; with
            `coupling="maple"` it defaults to `text_lengths`).
        mode (`str`): `"replace"` or `"prefix"`.
        coupling (`str`): `"none"` or `"maple"`.
        init_std (`float`): std of the normal prompt initialisation (0.02 in every released config).
        ctx_init (`str`, *optional*): replace mode: initialise the input context (index 0) from these words. As in
            the released MaPLe/IVLP/PromptSRC code the prompt prefix is the full init string: with `"a photo of a"`
            and 2 slots the learned vectors replace "a photo" and "of a" stays a frozen token before the class name.
        text_template (`str`, *optional*): the text fed when the text tower has no replace-mode slots (vision-only
            prompting, prefix mode), e.g. VPT's fixed `"a photo of a {}."`; defaults to the classifier's template.
        text_input (`str`, defaults to `"template"`): without replace-mode text slots, `"ensemble"` feeds DPL's
            released training-stage input (`CTX_INIT "ensemble"`): each class's token embeddings averaged
            position-wise over the 60 ImageNet templates, pooled at the EOT of the last one
            (`peft_vlprompt.tuners.dpl.ensemble`). `examples/dpl_search.py` writes it into `found.json`.

    Example:
        >>> from peft_vlprompt import DeepPromptConfig
        >>> config = DeepPromptConfig(text_lengths=[2] * 9 + [0] * 3, coupling="maple", ctx_init="a photo of a")
    """

    text_lengths: list[int] | None = field(
        default=None,
        metadata={"help": "Prompt length per text layer (index 0 = input context); None = no prompts.", **_LENGTHS},
    )
    vision_lengths: list[int] | None = field(
        default=None,
        metadata={
            "help": "Prompt length per vision layer (index 0 = after the patch embeddings); None = no prompts.",
            **_LENGTHS,
        },
    )
    mode: str = field(
        default="replace",
        metadata={"help": "'replace' (IVLP/VPT/MaPLe token prompts) or 'prefix' (DPL K/V prompts).", "choices": MODES},
    )
    coupling: str = field(
        default="none",
        metadata={
            "help": "'maple': vision prompts are learned projections of the text prompts.",
            "choices": COUPLINGS,
        },
    )
    init_std: float = field(
        default=0.02, metadata={"help": "Std of the random normal prompt initialisation.", "gt": 0}
    )
    ctx_init: str | None = field(
        default=None, metadata={"help": "Replace mode: words initialising the input context (MaPLe's quirk kept)."}
    )
    ctx_init_token_ids: list[int] | None = ctx_init_token_ids_field()
    text_template: str | None = field(
        default=None, metadata={"help": "Fixed text template when the text tower has no slots, e.g. VPT's."}
    )
    placeholder_token_id: int | None = field(
        default=None,
        metadata={
            "help": f"Token id of the filler {PLACEHOLDER_TOKEN!r} in the slots (filled from the model's family "
            "when the adapter is injected; informative: slots are found by position)."
        },
    )
    token_ids_from: str | None = token_ids_from_field()
    text_input: str = field(
        default="template",
        metadata={
            "choices": TEXT_INPUTS,
            "help": "Without text slots: 'template' or 'ensemble' (DPL's released training input: token embeddings "
            "averaged over the 60 ImageNet templates).",
        },
    )

    method_name = "deep_prompt"

    def __post_init__(self):
        super().__post_init__()
        self.text_lengths = _check_lengths("text_lengths", self.text_lengths)
        self.vision_lengths = _check_lengths("vision_lengths", self.vision_lengths)
        if self.mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}, got {self.mode!r}")
        if self.coupling not in COUPLINGS:
            raise ValueError(f"`coupling` must be one of {COUPLINGS}, got {self.coupling!r}")
        if isinstance(self.init_std, bool) or not isinstance(self.init_std, (int, float)) or self.init_std <= 0:
            raise ValueError(f"`init_std` must be > 0, got {self.init_std!r}")
        if self.text_template is not None and "{}" not in self.text_template:
            raise ValueError(f"`text_template` must contain '{{}}' for the class name, got {self.text_template!r}")
        if self.text_input not in TEXT_INPUTS:
            raise ValueError(f"`text_input` must be one of {TEXT_INPUTS}, got {self.text_input!r}")
        if self.text_input == "ensemble" and (self.text_slots or self.text_template is not None):
            raise ValueError(
                "`text_input='ensemble'` replaces the text template, so it needs no replace-mode text prompts and no "
                f"`text_template`; got `mode`={self.mode!r}, `text_lengths`={self.text_lengths}, "
                f"`text_template`={self.text_template!r}"
            )
        if self.coupling == "maple":
            if not any(self.text_lengths or ()):
                raise ValueError("`coupling='maple'` projects text prompts into the vision tower; set `text_lengths`")
            if self.vision_lengths is None:
                self.vision_lengths = list(self.text_lengths)
            self._check_coupling()
        if not any(self.text_lengths or ()) and not any(self.vision_lengths or ()):
            raise ValueError(
                "`text_lengths` and `vision_lengths` are both empty or all zero: set at least one prompt length "
                "(or use a preset such as `ivlp_preset`)"
            )
        self._check_ctx_init()
        self._tokenize_placeholder()

    def _check_coupling(self) -> None:
        text = self.text_lengths
        for i, n in enumerate(self.vision_lengths or ()):
            t = text[i] if i < len(text) else 0
            if n and n != t:
                raise ValueError(
                    f"`coupling='maple'` projects the text prompts of layer {i} into the vision tower, so "
                    f"`vision_lengths[{i}]` ({n}) must equal `text_lengths[{i}]` ({t})"
                )

    def _check_ctx_init(self) -> None:
        if self.ctx_init is not None and not self.ctx_init.strip():
            self.ctx_init = None
        if self.ctx_init is None:
            self.ctx_init_token_ids = None
            return
        if self.mode != "replace":
            raise ValueError(f"`ctx_init` initialises the replace-mode input context; got `mode`={self.mode!r}")
        if not self.text_lengths or self.text_lengths[0] < 1:
            raise ValueError("`ctx_init` initialises the input context, so `text_lengths[0]` must be >= 1")
        self.ctx_init = self.ctx_init.replace("_", " ").strip()
        self._tokenize_ctx_init()
        self._check_token_ids()

    def _check_token_ids(self, rederive: bool = False) -> None:
        if self.text_slots > len(self.ctx_init_token_ids):
            raise ValueError(
                f"`ctx_init` {self.ctx_init!r} has {len(self.ctx_init_token_ids)} tokens, fewer than the "
                f"{self.text_slots} text prompt slots (max of `text_lengths`)"
            )

    # -- layout ---------------------------------------------------------------------------------------------------
    @property
    def text_slots(self) -> int:
        """Replace mode: token positions after BOS that text prompts may replace (0 in prefix mode)."""
        return max(self.text_lengths or [0]) if self.mode == "replace" else 0

    def validate_for_backbone(self, backbone: Backbone) -> None:
        for name, lengths, layers, tower in (
            ("text_lengths", self.text_lengths, backbone.text_layers, "text"),
            ("vision_lengths", self.vision_lengths, backbone.vision_layers, "vision"),
        ):
            if lengths is not None and len(lengths) != layers:
                raise ValueError(
                    f"`{name}` has {len(lengths)} entries but the {tower} tower has {layers} layers; give one length "
                    "per layer (0 = no prompt)"
                )
        self.resolve_tokens(backbone)
        if self.mode == "replace" and any(self.vision_lengths or ()) and backbone.vision_pooling == "head":
            if not backbone.vision_head_input:  # a family file's omission, caught before any module is wrapped
                raise ValueError(
                    f"replace-mode vision prompts (`vision_lengths`={self.vision_lengths}) must be dropped before the "
                    f"pooling head of a {backbone.family} model, but its backbone names no `vision_head_input`: use "
                    "text prompts only or `mode='prefix'`"
                )
        if self.placeholder_token_id is not None and self.placeholder_token_id >= backbone.vocab_size:
            raise ValueError(
                f"`placeholder_token_id`={self.placeholder_token_id} is outside the model's vocabulary "
                f"({backbone.vocab_size} tokens)"
            )
        prefix_tokens = len(self.ctx_init_token_ids) if self.ctx_init_token_ids else self.text_slots
        if prefix_tokens and prefix_tokens + 4 > backbone.max_positions:  # BOS, slots, >= 1 class token, ".", EOS
            raise ValueError(
                f"{prefix_tokens} text prompt slots do not fit the text tower's {backbone.max_positions} positions"
            )

    def layer_specs(self, backbone: Backbone) -> dict[str, LayerSpec]:
        """Module path -> what the wrapper at that path does (only layers with prompts)."""
        specs = {}
        for tower, lengths, width in (
            ("text", self.text_lengths, backbone.text_width),
            ("vision", self.vision_lengths, backbone.vision_width),
        ):
            carried = 0
            for index, length in enumerate(lengths or ()):
                if not length:
                    continue
                kind = "attention" if self.mode == "prefix" else ("embedding" if index == 0 else "layer")
                coupled = self.coupling == "maple" and tower == "vision"
                path = self.module_path(tower, index, backbone)
                specs[path] = LayerSpec(tower, index, kind, length, width, carried, coupled)
                if self.mode == "replace" and tower == "vision":
                    carried = length  # later layers drop these before appending their own
            if tower == "vision" and carried and backbone.vision_pooling == "head":
                # an attention-pooling head would pool the prompts still appended after the last layer
                specs[backbone.vision_head_input] = LayerSpec(tower, len(lengths), "drop", 0, width, carried)
        return specs

    def module_path(self, tower: str, index: int, backbone: Backbone | type[Backbone]) -> str:
        """Path of the module holding the prompts of `tower` at `index` in a model of `backbone`'s family."""
        if self.mode == "prefix":
            return backbone.text_attention(index) if tower == "text" else backbone.vision_attention(index)
        if index == 0:
            return backbone.token_embedding if tower == "text" else backbone.vision_embeddings
        return backbone.text_layer(index) if tower == "text" else backbone.vision_layer(index)

    def target_module_names(self, backbone: Backbone) -> list[str]:
        ensemble = [backbone.token_embedding] if self.text_input == "ensemble" else []  # `tuners.dpl.ensemble`
        return list(self.layer_specs(backbone)) + ensemble

    # -- text fed to the text tower -------------------------------------------------------------------------------
    def prompt_texts(self, classnames: list[str], template: str) -> list[str]:
        names = [class_text(name) for name in classnames]
        if self.text_input == "ensemble":  # the last template: its ids carry the class tokens and the pooled EOT
            from ..dpl.ensemble import ensemble_templates

            return [ensemble_templates()[-1].format(name) for name in names]
        if not self.text_slots:
            return [(self.text_template or template).format(name) for name in names]
        prefix = self.ctx_init or " ".join([PLACEHOLDER_TOKEN] * self.text_slots)
        return [f"{prefix} {name}." for name in names]


@dataclass
class PromptSRCConfig(DeepPromptConfig):
    """PromptSRC (Khattak et al., ICCV'23, https://arxiv.org/abs/2307.06948): IVLP deep prompts plus the settings of
    its self-regulating losses (`peft_vlprompt.losses.promptsrc_losses`) and Gaussian prompt aggregation
    (`peft_vlprompt.optim.GaussianPromptAggregator`).

    Defaults are the released base-to-new setting for ViT-B/16 (12 layers per tower):
    `configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml` = 4 text + 4 vision prompts at depth 9,
    `CTX_INIT "a photo of a"`, text / image loss weights 25 / 10, GPA N(15, 1) over 20 epochs. For another backbone
    use `promptsrc_preset(model)`, which sizes the lists to the model. On attention-pooling families (SigLIP) the
    appended vision prompts are dropped before the pooling head; the losses' frozen side runs with the adapter off.

    Args:
        text_loss_weight (`float`): weight of the L1 text-feature term (`TEXT_LOSS_WEIGHT`).
        image_loss_weight (`float`): weight of the L1 image-feature term (`IMAGE_LOSS_WEIGHT`).
        gpa_mean / gpa_std (`float`): Gaussian prompt aggregation over epochs (1-based).
    """

    text_lengths: list[int] | None = field(
        default_factory=lambda: [4] * 9 + [0] * 3,
        metadata={"help": "Prompt length per text layer; default 4 prompts at depth 9 of 12 layers.", **_LENGTHS},
    )
    vision_lengths: list[int] | None = field(
        default_factory=lambda: [4] * 9 + [0] * 3,
        metadata={"help": "Prompt length per vision layer; default 4 prompts at depth 9 of 12 layers.", **_LENGTHS},
    )
    ctx_init: str | None = field(
        default="a photo of a", metadata={"help": "Words initialising the input context (PromptSRC's CTX_INIT)."}
    )
    text_loss_weight: float = field(
        default=25.0, metadata={"help": "Weight of the L1 text-feature consistency.", "min": 0}
    )
    image_loss_weight: float = field(
        default=10.0, metadata={"help": "Weight of the L1 image-feature consistency.", "min": 0}
    )
    gpa_mean: float = field(default=15.0, metadata={"help": "Mean (epoch, 1-based) of the GPA Gaussian."})
    gpa_std: float = field(default=1.0, metadata={"help": "Std (epochs) of the GPA Gaussian.", "gt": 0})

    method_name = "promptsrc"

    def __post_init__(self):
        super().__post_init__()
        for name in ("text_loss_weight", "image_loss_weight"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"`{name}` must be a number >= 0, got {value!r}")
        if isinstance(self.gpa_std, bool) or not isinstance(self.gpa_std, (int, float)) or self.gpa_std <= 0:
            raise ValueError(f"`gpa_std` must be > 0, got {self.gpa_std!r}")
