"""KgCoOp configuration (Yao et al., "Visual-Language Prompt Tuning with Knowledge-guided Context Optimization",
CVPR 2023)."""

import math
from dataclasses import dataclass, field

from ..base import DEFAULT_TEMPLATE
from ..coop.config import CoOpConfig


@dataclass
class KgCoOpConfig(CoOpConfig):
    """CoOp context regularised towards the zero-shot text features. See https://arxiv.org/abs/2303.13283.

    The objective is `CE + kg_weight * (1 - mean_c cos(t_c, t_c^clip))` (`peft_vlprompt.losses.kgcoop_loss`), where
    `t^clip` are the frozen features of `teacher_template`. KgCoOp's released setting initialises the context from
    `"a photo of a"` (hence `n_ctx=4`) and uses `kg_weight=8.0` for base-to-new. Its per-dataset teacher templates are
    CoOp's, except DTD (`"a photo of a {}, a type of texture."`), see `peft_vlprompt.data.templates`.

    The adapter holds only the context; `kg_weight` and `teacher_template` are stored with it. Pass
    `template=config.teacher_template` to `PromptClassifier`, whose `zero_shot_text_features()` are `t^clip` (cached).

    Args:
        kg_weight (`float`, defaults to `8.0`): weight of the knowledge-guided term (KgCoOp's `W`, lambda).
        teacher_template (`str`, defaults to `"a photo of a {}."`): template of the frozen hand-crafted features.

    Example:
        >>> config = KgCoOpConfig(teacher_template="a photo of a {}, a type of pet.")
        >>> model = get_peft_model(clip_model, config)
    """

    n_ctx: int | None = field(
        default=None,
        metadata={"help": "Number of context vectors: derived from `ctx_init` (4 for 'a photo of a'), else 16."},
    )
    ctx_init: str | None = field(
        default="a photo of a", metadata={"help": "Words initialising the context (KgCoOp: 'a photo of a')."}
    )
    kg_weight: float = field(default=8.0, metadata={"help": "Weight of the knowledge-guided term (KgCoOp's W)."})
    teacher_template: str = field(
        default=DEFAULT_TEMPLATE, metadata={"help": "Template of the frozen hand-crafted text features, with '{}'."}
    )

    method_name = "kgcoop"

    def __post_init__(self):
        super().__post_init__()
        if isinstance(self.kg_weight, bool) or not isinstance(self.kg_weight, (int, float)):
            raise TypeError(f"`kg_weight` must be a float, got {type(self.kg_weight).__name__}")
        if not math.isfinite(self.kg_weight) or self.kg_weight < 0:
            raise ValueError(f"`kg_weight` must be a finite number >= 0, got {self.kg_weight!r}")
        if "{}" not in self.teacher_template:
            raise ValueError(
                f"`teacher_template` must contain '{{}}' for the class name, got {self.teacher_template!r}"
            )
