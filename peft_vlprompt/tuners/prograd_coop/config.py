"""ProGrad configuration (Zhu et al., "Prompt-aligned Gradient for Prompt Tuning", ICCV 2023).

ProGrad learns CoOp context; what changes is the update: the task gradient is projected away from the gradient of a
distillation loss to the zero-shot CLIP teacher (`peft_vlprompt.optim.ProGrad`, `losses.prograd_general_loss`).
"""

import math
from dataclasses import dataclass, field

from ..base import DEFAULT_TEMPLATE
from ..coop.config import CoOpConfig
from ..tokens import PLACEHOLDER_TOKEN


@dataclass
class ProGradCoOpConfig(CoOpConfig):
    """CoOp context trained with ProGrad. See https://arxiv.org/abs/2205.14865.

    The defaults are ProGrad's released setting: `n_ctx=16`, class name at the end, and the context initialised from
    the teacher template without `" {}."` (`"a photo of a"`), placed in the **last** positions with zero vectors before
    them (12 zeros then "a photo of a"), the phrase counted in words as released (`ctx_init_split="words"`). Use [`ProGradCoOpConfig.paper_init`] to derive the init phrase from a
    per-dataset template (`peft_vlprompt.data.templates.TEMPLATES["prograd"]`). Set `ctx_init=None` for CoOp's random
    init; with `ctx_init` set, `n_ctx` must be at least the phrase's word (or, split by tokens, BPE token) count.

    The adapter holds only the context; `lambda_`, `temperature` and `teacher_template` are stored with it so a
    loaded adapter says how it was trained. Pass `template=config.teacher_template` to `PromptClassifier`: its
    `zero_shot_text_features()` are the (cached) teacher features.

    Args:
        lambda_ (`float`, defaults to `1.0`): projection strength given to `ProGrad(optimizer, lambda_=...)`; 1 removes
            the conflicting component fully. The README uses 0.8 for 8/16 shots on Flowers102, DTD and EuroSAT.
        temperature (`float`, defaults to `1.0`): T of the distillation loss `prograd_general_loss(..., T=...)`.
        teacher_template (`str`, defaults to `"a photo of a {}."`): hand-crafted template of the zero-shot teacher.
        frozen_suffix (`str`, *optional*): legacy form of the word split (configs saved before `ctx_init_split`
            existed): words kept frozen between the learned context and the class name.

    Example:
        >>> config = ProGradCoOpConfig.paper_init("a type of pet, a photo of a {}.")
        >>> model = get_peft_model(clip_model, config)
        >>> optimizer = make_prograd_optimizer(torch.optim.SGD(model.parameters(), lr=2e-3, momentum=0.9), config)
    """

    n_ctx: int | None = field(
        default=None, metadata={"help": "Number of learnable context vectors (default 16, as ProGrad)."}
    )
    ctx_init: str | None = field(
        default="a photo of a",
        metadata={"help": "Words initialising the last context positions (ProGrad: the teacher template's phrase)."},
    )
    pad_ctx_init: bool = field(
        default=True, metadata={"help": "Keep `n_ctx`: zero vectors first, then the `ctx_init` embeddings."}
    )
    lambda_: float = field(default=1.0, metadata={"help": "ProGrad projection strength (1 = full projection)."})
    temperature: float = field(default=1.0, metadata={"help": "Temperature T of the teacher distillation loss."})
    teacher_template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "Hand-crafted template of the zero-shot teacher, with '{}'."}
    )
    frozen_suffix: str | None = field(
        default=None,
        metadata={
            "help": "Legacy (configs saved before `ctx_init_split`): frozen words between the context and the class "
            "name. New configs express ProGrad's word split with `ctx_init_split='words'`."
        },
    )

    method_name = "prograd_coop"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.lambda_, bool) or not isinstance(self.lambda_, (int, float)):
            raise TypeError(f"`lambda_` must be a float, got {type(self.lambda_).__name__}")
        if not math.isfinite(self.lambda_) or self.lambda_ < 0:
            raise ValueError(f"`lambda_` must be a finite number >= 0, got {self.lambda_!r}")
        if isinstance(self.temperature, bool) or not isinstance(self.temperature, (int, float)):
            raise TypeError(f"`temperature` must be a float, got {type(self.temperature).__name__}")
        if not math.isfinite(self.temperature) or self.temperature <= 0:
            raise ValueError(f"`temperature` must be a finite number > 0, got {self.temperature!r}")
        if "{}" not in self.teacher_template:
            raise ValueError(
                f"`teacher_template` must contain '{{}}' for the class name, got {self.teacher_template!r}"
            )
        if self.frozen_suffix is not None and not self.frozen_suffix.strip():
            self.frozen_suffix = None
        if self.frozen_suffix is not None and self.frozen_init_token_ids:
            raise ValueError(
                f"`frozen_suffix`={self.frozen_suffix!r} (legacy) and a words-split `ctx_init`={self.ctx_init!r} both "
                "freeze tokens before the class name; drop `frozen_suffix` (`ctx_init_split='words'` does it)"
            )
        if self.frozen_suffix is not None and self.class_token_position != "end":
            raise ValueError(
                "`frozen_suffix` needs `class_token_position='end'` (ProGrad's setting), got "
                f"{self.class_token_position!r}"
            )

    @classmethod
    def paper_init(
        cls, teacher_template: str = DEFAULT_TEMPLATE, n_ctx: int = 16, split_by_words: bool = True, **kwargs
    ) -> "ProGradCoOpConfig":
        """ProGrad's initialisation from a teacher template: the phrase is the template without `" {}."`.

        The context has `n_ctx` vectors: zeros, then the phrase's token embeddings in the last positions.

        The pitfall (methods.md §6): ProGrad's code counts the phrase in space-split *words* (k), not BPE tokens. Its
        prompt is `"X" * (n_ctx - k) + phrase + class`, so the learned context covers `n_ctx - k` zeros and the first k
        BPE tokens of the phrase, and the remaining BPE tokens stay frozen before the class name. For
        `"a type of pet, a photo of a"` (8 words, 9 tokens: "pet," is two) the final "a" is frozen. That is the
        default (`split_by_words=True`, i.e. `ctx_init_split="words"`), the released configuration;
        `split_by_words=False` counts BPE tokens instead (all phrase tokens are learned, `n_ctx - 9` zeros). Both learn
        `n_ctx` vectors and coincide when every word is one token, as for `"a photo of a"`.

        Args:
            teacher_template: the zero-shot teacher's template; must end with `" {}."` (all ProGrad templates do).
            n_ctx: number of context vectors.
            split_by_words: ProGrad's released word-count split (default); False: one vector per BPE token.
            kwargs: other `ProGradCoOpConfig` fields (`lambda_`, `temperature`, ...).
        """
        if not teacher_template.endswith(" {}."):
            raise ValueError(
                f"`teacher_template` must end with ' {{}}.' to derive ProGrad's init phrase, got {teacher_template!r}"
            )
        phrase = teacher_template[: -len(" {}.")].strip()
        return cls(
            n_ctx=n_ctx,
            ctx_init=phrase or None,
            ctx_init_split="words" if split_by_words else "tokens",
            pad_ctx_init=True,
            teacher_template=teacher_template,
            **kwargs,
        )

    def prompt_texts(self, classnames: list[str], template: str) -> list[str]:
        texts = super().prompt_texts(classnames, template)
        if self.frozen_suffix is None:
            return texts
        # "X X ... X {class}." -> "X X ... X {frozen} {class}."
        head = " ".join([PLACEHOLDER_TOKEN] * self.n_ctx)
        return [f"{head} {self.frozen_suffix}{text[len(head) :]}" for text in texts]
