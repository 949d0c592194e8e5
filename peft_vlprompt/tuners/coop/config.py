"""CoOp configuration (Zhou et al., "Learning to Prompt for Vision-Language Models", IJCV 2022)."""

from dataclasses import dataclass, field

from ...backbones import ClipBackbone
from ...backbones.clip import TOKEN_EMBEDDING
from ..base import VLPromptConfig
from ..tokens import PLACEHOLDER_TOKEN, PLACEHOLDER_TOKEN_ID, clip_token_ids

CLASS_TOKEN_POSITIONS = ("end", "middle", "front")


@dataclass
class CoOpConfig(VLPromptConfig):
    """Learnable text context that replaces placeholder tokens of `"X X ... X {class}."` in place.

    Args:
        n_ctx (`int`): number of context vectors M. Set to the token count of `ctx_init` when that is given
            (unless `pad_ctx_init`).
        ctx_init (`str`, *optional*): words whose token embeddings initialise the context, e.g. `"a photo of a"`.
        pad_ctx_init (`bool`): keep `n_ctx` and put the `ctx_init` embeddings in the last positions with zeros
            before them (ProGrad's initialisation: 12 zeros then "a photo of a" for `n_ctx=16`).
        class_specific (`bool`): one context per class, shape `(n_classes, n_ctx, d)` (CoOp's CSC).
        n_classes (`int`, *optional*): number of classes; required when `class_specific`.
        class_token_position (`str`): `"end"` (`X X X X {class}.`), `"middle"` (`X X {class} X X.`) or
            `"front"` (`{class} X X X X.`).
        init_std (`float`): std of the normal initialisation when `ctx_init` is not given.

    Example:
        >>> import peft_vlprompt
        >>> from peft import get_peft_model
        >>> model = get_peft_model(clip_model, peft_vlprompt.CoOpConfig(n_ctx=16))
    """

    n_ctx: int = field(default=16, metadata={"help": "Number of learnable context vectors."})
    ctx_init: str | None = field(
        default=None, metadata={"help": "Words initialising the context; sets `n_ctx` to their token count."}
    )
    pad_ctx_init: bool = field(
        default=False,
        metadata={"help": "Keep `n_ctx`: zeros first, then the `ctx_init` embeddings (ProGrad's init)."},
    )
    class_specific: bool = field(default=False, metadata={"help": "One context per class (CSC)."})
    n_classes: int | None = field(default=None, metadata={"help": "Number of classes (class-specific context)."})
    class_token_position: str = field(default="end", metadata={"help": "Where the class name goes: end/middle/front."})
    init_std: float = field(default=0.02, metadata={"help": "Std of the random normal context initialisation."})
    ctx_init_token_ids: list[int] | None = field(
        default=None, metadata={"help": "CLIP BPE ids of `ctx_init` (derived; stored so loading needs no tokenizer)."}
    )
    placeholder_token_id: int = field(
        default=PLACEHOLDER_TOKEN_ID, metadata={"help": f"Token id of the placeholder {PLACEHOLDER_TOKEN!r}."}
    )

    method_name = "coop"

    def __post_init__(self):
        super().__post_init__()
        if self.class_token_position not in CLASS_TOKEN_POSITIONS:
            raise ValueError(
                f"`class_token_position` must be one of {CLASS_TOKEN_POSITIONS}, got {self.class_token_position!r}"
            )
        if self.ctx_init is not None and not self.ctx_init.strip():
            self.ctx_init = None
        if self.ctx_init is not None:
            self.ctx_init = self.ctx_init.replace("_", " ").strip()
            self.ctx_init_token_ids = clip_token_ids(self.ctx_init)
            if not self.pad_ctx_init:
                self.n_ctx = len(self.ctx_init_token_ids)
        if not isinstance(self.n_ctx, int) or self.n_ctx < 1:
            raise ValueError(f"`n_ctx` must be >= 1, got {self.n_ctx!r}")
        if self.ctx_init_token_ids is not None and len(self.ctx_init_token_ids) > self.n_ctx:
            raise ValueError(
                f"`ctx_init` {self.ctx_init!r} has {len(self.ctx_init_token_ids)} tokens, more than `n_ctx`={self.n_ctx}"
            )
        if self.class_specific and (self.n_classes is None or self.n_classes < 1):
            raise ValueError(f"`class_specific=True` needs `n_classes` >= 1, got `n_classes`={self.n_classes!r}")
        if self.init_std <= 0:
            raise ValueError(f"`init_std` must be > 0, got {self.init_std!r}")

    def target_module_names(self, backbone: ClipBackbone) -> list[str]:
        return [TOKEN_EMBEDDING]

    def validate_for_backbone(self, backbone: ClipBackbone) -> None:
        if self.placeholder_token_id >= backbone.vocab_size:
            raise ValueError(
                f"`placeholder_token_id`={self.placeholder_token_id} is outside the model's vocabulary "
                f"({backbone.vocab_size} tokens)"
            )
        # SOS + context + at least one class token + "." + EOS must fit
        if self.n_ctx + 4 > backbone.max_positions:
            raise ValueError(f"`n_ctx`={self.n_ctx} does not fit the text tower's {backbone.max_positions} positions")

    @property
    def placeholder_count(self) -> int:
        return self.n_ctx

    def prompt_texts(self, classnames: list[str], template: str) -> list[str]:
        placeholders = [PLACEHOLDER_TOKEN] * self.n_ctx
        texts = []
        for name in classnames:
            name = name.replace("_", " ")
            if self.class_token_position == "end":
                words = placeholders + [name + "."]
            elif self.class_token_position == "front":
                words = [name] + placeholders[:-1] + [placeholders[-1] + "."]
            else:
                half = self.n_ctx // 2
                words = placeholders[:half] + [name] + placeholders[half:]
                words[-1] += "."
            texts.append(" ".join(words))
        return texts
