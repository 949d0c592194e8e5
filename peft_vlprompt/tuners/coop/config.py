"""CoOp configuration (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022)."""

import logging
from dataclasses import dataclass, field

from ...backbones import Backbone
from ..base import VLPromptConfig
from ..tokens import PLACEHOLDER_TOKEN, TokenIdsMixin, class_text, ctx_init_token_ids_field, token_ids_from_field

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")
CTX_INIT_SPLITS = ("words", "tokens")
CLASS_SPECIFIC_INITS = ("shared", "per_class")
DEFAULT_N_CTX = 16

logger = logging.getLogger(__name__)


@dataclass
class CoOpConfig(TokenIdsMixin, VLPromptConfig):
    """Learnable text context placed at fixed positions of the prompt `"X X ... X {class}."`.

    The context slots are located by position (known from the layout: right after SOS for `"end"`, before `"."` for
    `"front"`, both for `"middle"`), not by token id, as the released code does, so any class name works (also one
    tokenised to the placeholder `X`).

    Released CoOp derives the context length from `ctx_init`: `n_ctx = len(ctx_init.split(" "))` (words), the
    context is the token embeddings at positions 1..n_ctx of `"{ctx_init} {class}."`, and when a word is more than
    one BPE token the tokens past the first `n_ctx` stay frozen before the class name. That is the default
    (`ctx_init_split="words"`); `ctx_init_split="tokens"` learns one vector per BPE token instead. An explicit
    `n_ctx` that differs from the length derived from `ctx_init` is an error (unless `pad_ctx_init`).

    Args:
        n_ctx (`int`, *optional*): number of context vectors M. Default: 16 without `ctx_init` (or with
            `pad_ctx_init`), else derived from `ctx_init` (see `ctx_init_split`).
        ctx_init (`str`, *optional*): words whose token embeddings initialise the context, e.g. `"a photo of a"`.
        ctx_init_split (`str`, defaults to `"words"`): how `ctx_init` is counted. `"words"` (released CoOp / ProGrad):
            k = number of space-separated words; the first k BPE tokens are learned, any further tokens stay frozen
            (needs `class_token_position="end"`). `"tokens"`: k = number of BPE tokens, all learned.
        pad_ctx_init (`bool`): keep `n_ctx` and put the k `ctx_init` embeddings in the last positions with zeros
            before them (ProGrad's initialisation: 12 zeros then "a photo of a" for `n_ctx=16`).
        class_specific (`bool`): one context per class, shape `(n_classes, n_ctx, d)` (CoOp's CSC).
        class_specific_init (`str`, defaults to `"shared"`): CSC together with `ctx_init`. `"shared"` (released CoOp,
            which ignores CSC when CTX_INIT is set): one context shared by all classes. `"per_class"`: the words
            are copied into one context per class, trained separately.
        n_classes (`int`, *optional*): number of classes; required when `class_specific`.
        class_token_position (`str`): `"end"` (`X X X X {class}.`), `"middle"` (`X X {class} X X.`) or
            `"front"` (`{class} X X X X.`).
        init_std (`float`): std of the normal initialisation when `ctx_init` is not given.

    Example:
        >>> import peft_vlprompt
        >>> from peft import get_peft_model
        >>> model = get_peft_model(clip_model, peft_vlprompt.CoOpConfig(n_ctx=16))
    """

    n_ctx: int | None = field(
        default=None,
        metadata={
            "help": "Number of learnable context vectors (default 16, or derived from `ctx_init`; an explicit value "
            "that conflicts with `ctx_init` is an error)."
        },
    )
    ctx_init: str | None = field(
        default=None, metadata={"help": "Words initialising the context; `n_ctx` is derived from them."}
    )
    ctx_init_split: str | None = field(
        default=None,
        metadata={
            "choices": CTX_INIT_SPLITS,
            "help": "'words' (default, released CoOp/ProGrad: one vector per space-separated word, extra BPE tokens "
            "stay frozen) or 'tokens' (one vector per BPE token of `ctx_init`).",
        },
    )
    pad_ctx_init: bool = field(
        default=False,
        metadata={"help": "Keep `n_ctx`: zeros first, then the `ctx_init` embeddings (ProGrad's init)."},
    )
    class_specific: bool = field(default=False, metadata={"help": "One context per class (CSC)."})
    class_specific_init: str = field(
        default="shared",
        metadata={
            "choices": CLASS_SPECIFIC_INITS,
            "help": "CSC with `ctx_init`: 'shared' (released CoOp ignores CSC when CTX_INIT is set: one shared "
            "context) or 'per_class' (the words copied into one context per class).",
        },
    )
    n_classes: int | None = field(default=None, metadata={"help": "Number of classes (class-specific context)."})
    class_token_position: str = field(default="end", metadata={"help": "Where the class name goes: end/middle/front."})
    init_std: float = field(default=0.02, metadata={"help": "Std of the random normal context initialisation."})
    ctx_init_token_ids: list[int] | None = ctx_init_token_ids_field()
    placeholder_token_id: int | None = field(
        default=None,
        metadata={
            "help": f"Token id of the placeholder {PLACEHOLDER_TOKEN!r} (filled from the model's family when "
            "the adapter is injected; informative: slots are found by position)."
        },
    )
    token_ids_from: str | None = token_ids_from_field()

    method_name = "coop"

    def __post_init__(self):
        super().__post_init__()
        if self.class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"`class_token_position` must be one of {CLASS_TOKEN_POSITIONS}, got {self.class_token_position!r}"
            )
        if self.ctx_init_split is None:  # legacy ProGrad configs (`frozen_suffix`) counted BPE tokens
            self.ctx_init_split = "tokens" if getattr(self, "frozen_suffix", None) else "words"
        if self.ctx_init_split not in CTX_INIT_SPLITS:
            raise ValueError(f"`ctx_init_split` must be one of {CTX_INIT_SPLITS}, got {self.ctx_init_split!r}")
        if self.class_specific_init not in CLASS_SPECIFIC_INITS:
            raise ValueError(
                f"`class_specific_init` must be one of {CLASS_SPECIFIC_INITS}, got {self.class_specific_init!r}"
            )
        if self.n_ctx is not None and (isinstance(self.n_ctx, bool) or not isinstance(self.n_ctx, int)):
            raise TypeError(f"`n_ctx` must be an int, got {type(self.n_ctx).__name__}")
        if self.ctx_init is not None and not self.ctx_init.strip():
            self.ctx_init = None
        if self.ctx_init is None:
            self.n_ctx = DEFAULT_N_CTX if self.n_ctx is None else self.n_ctx
        else:
            self._resolve_ctx_init()
        if self.n_ctx < 1:
            raise ValueError(f"`n_ctx` must be >= 1, got {self.n_ctx!r}")
        self._tokenize_placeholder()
        if self.class_specific and (self.n_classes is None or self.n_classes < 1):
            raise ValueError(f"`class_specific=True` needs `n_classes` >= 1, got `n_classes`={self.n_classes!r}")
        if self.class_specific and self.ctx_init is not None and self.class_specific_init == "shared":
            logger.warning(
                "`class_specific=True` with `ctx_init`=%r: one context is shared by all classes, as released CoOp "
                "does when CTX_INIT is set; set `class_specific_init='per_class'` for one context per class",
                self.ctx_init,
            )
        if self.init_std <= 0:
            raise ValueError(f"`init_std` must be > 0, got {self.init_std!r}")

    @classmethod
    def check_kwargs(cls, **kwargs):
        # peft's hook on the saved `adapter_config.json` (`from_pretrained`): files written before `ctx_init_split`
        # existed counted `ctx_init` in BPE tokens, so they load with that split and give the prompts they were
        # trained with (a words split would move a multi-token word's tail into the frozen text)
        kwargs = super().check_kwargs(**kwargs)
        if kwargs.get("ctx_init") and "ctx_init_split" not in kwargs:
            logger.info("adapter config without `ctx_init_split` (saved before it existed): loading it as 'tokens'")
            kwargs["ctx_init_split"] = "tokens"
        return kwargs

    def _resolve_ctx_init(self) -> None:
        # CoOp's own preprocessing of CTX_INIT
        self.ctx_init = self.ctx_init.replace("_", " ").strip()
        self._tokenize_ctx_init()
        self._check_token_ids()

    def _check_token_ids(self, rederive: bool = False) -> None:
        # `rederive`: the ids changed (another family's tokenizer); a token-counted context length follows them
        if rederive and self.ctx_init_split == "tokens" and not self.pad_ctx_init:
            if self.n_ctx != len(self.ctx_init_token_ids):
                logger.warning("`ctx_init`=%r has %d tokens in this tokenizer: `n_ctx` becomes %d (was %s)",
                               self.ctx_init, len(self.ctx_init_token_ids), len(self.ctx_init_token_ids), self.n_ctx)  # fmt: skip
            self.n_ctx = None
        k = self.n_init
        counted = f"{k} {'words' if self.ctx_init_split == 'words' else 'tokens'}"
        if k > len(self.ctx_init_token_ids):
            raise ValueError(
                f"`ctx_init` {self.ctx_init!r} has {counted} but only {len(self.ctx_init_token_ids)} BPE tokens; "
                "separate its words by single spaces or use `ctx_init_split='tokens'`"
            )
        if self.frozen_init_token_ids and self.class_token_position != "end":
            raise ValueError(
                f"`ctx_init` {self.ctx_init!r} has {counted} but {len(self.ctx_init_token_ids)} BPE tokens, and the "
                f"frozen rest needs `class_token_position='end'`, got {self.class_token_position!r}; use "
                "`ctx_init_split='tokens'`"
            )
        if self.pad_ctx_init:
            self.n_ctx = DEFAULT_N_CTX if self.n_ctx is None else self.n_ctx
            if k > self.n_ctx:
                raise ValueError(f"`ctx_init` {self.ctx_init!r} has {counted}, more than `n_ctx`={self.n_ctx}")
        elif self.n_ctx is not None and self.n_ctx != k:
            raise ValueError(
                f"`n_ctx`={self.n_ctx} conflicts with `ctx_init`={self.ctx_init!r}, which gives {k} context vectors "
                f"(`ctx_init_split`={self.ctx_init_split!r}): leave `n_ctx` unset, set `ctx_init=None` for {self.n_ctx} "
                f"randomly initialised vectors, or `pad_ctx_init=True` for {self.n_ctx} vectors ending with the words"
            )
        else:
            self.n_ctx = k

    @property
    def n_init(self) -> int:
        """Context vectors initialised from `ctx_init` (words or BPE tokens, see `ctx_init_split`); 0 without it."""
        if self.ctx_init is None:
            return 0
        if self.ctx_init_split == "words":
            return len(self.ctx_init.split(" "))
        return len(self.ctx_init_token_ids)

    @property
    def frozen_init_token_ids(self) -> list[int]:
        """BPE ids of `ctx_init` past the first `n_init` (words split): frozen tokens before the class name."""
        return list(self.ctx_init_token_ids[self.n_init :]) if self.ctx_init is not None else []

    @property
    def per_class_context(self) -> bool:
        """Whether each class has its own context (CSC, unless `ctx_init` is set and `class_specific_init` shares)."""
        return self.class_specific and (self.ctx_init is None or self.class_specific_init == "per_class")

    def target_module_names(self, backbone: Backbone) -> list[str]:
        return [backbone.token_embedding]

    def validate_for_backbone(self, backbone: Backbone) -> None:
        self.resolve_tokens(backbone)
        if self.placeholder_token_id is not None and self.placeholder_token_id >= backbone.vocab_size:
            raise ValueError(
                f"`placeholder_token_id`={self.placeholder_token_id} is outside the model's vocabulary "
                f"({backbone.vocab_size} tokens)"
            )
        # SOS + context + at least one class token + "." + EOS must fit
        if self.n_ctx + 4 > backbone.max_positions:
            raise ValueError(f"`n_ctx`={self.n_ctx} does not fit the text tower's {backbone.max_positions} positions")

    @property
    def placeholder_count(self) -> int:
        # the context slots are found by position, so a prompt needs no particular count of placeholder tokens (a
        # class named "x-ray" adds one; a words-split `ctx_init` writes its words where placeholders would be)
        return 0

    def prompt_texts(self, classnames: list[str], template: str) -> list[str]:
        # the slots are found by position, so the text at them only has to have the right token count: "X" each,
        # except that a words-split `ctx_init` keeps its frozen rest, so it is written out in full (as released)
        if self.frozen_init_token_ids:
            prefix = [PLACEHOLDER_TOKEN] * (self.n_ctx - self.n_init) + [self.ctx_init]
        else:
            prefix = [PLACEHOLDER_TOKEN] * self.n_ctx
        texts = []
        for name in map(class_text, classnames):
            if self.class_token_position == "end":
                words = prefix + [name + "."]
            elif self.class_token_position == "front":
                words = [name] + prefix[:-1] + [prefix[-1] + "."]
            else:
                half = self.n_ctx // 2
                words = prefix[:half] + [name] + prefix[half:]
                words[-1] += "."
            texts.append(" ".join(words))
        return texts
