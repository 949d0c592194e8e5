"""DPL search-stage configuration (Huang et al., "Differentiable Prompt Learning for Vision Language Models",
IJCAI 2025, https://arxiv.org/abs/2501.00457)."""

from dataclasses import dataclass, field

from ...backbones import Backbone
from ..base import VLPromptConfig

TOWERS = ("text", "vision")
PROMPT_INITS = ("released", "normal")
MIXINGS = ("efficient", "naive")
# SOS + at least one word + EOT: the shortest text prompt the key/value budget must leave room for
MIN_TEXT_TOKENS = 3


def _default_candidates() -> list[int]:
    return list(range(7))


@dataclass
class DPLSearchConfig(VLPromptConfig):
    """The DPL supernet: every encoder layer of both towers mixes prefix (key/value) prompts of several lengths.

    In layer l the attention output is `sum_m softmax(alpha_l)_m * Attn(Q=LN1(x), K/V=LN1([x; P_l^(m)]))`, where
    candidate m = 0 is plain self-attention and `P_l^(m)` holds m learnable vectors. Prompts only extend keys and
    values (text: visible to every token, SOS included; vision: appended after the patches), so the sequence, the
    residual/MLP path and the pooling are untouched. The architecture weights `alpha` (one row of
    `len(candidates)` logits per layer and tower) are learned on validation batches and the prompts on training
    batches (`peft_vlprompt.dpl.DPLSearch`); the per-layer argmax is exported as a
    `DeepPromptConfig(mode="prefix", ...)` (`peft_vlprompt.dpl.found_config`).

    Args:
        text_candidates (`list[int]`): prompt lengths searched in every text layer; must contain 0 (no prompt).
            `[0]` leaves the text tower unprompted. The paper's code searches 0..6; a summary of the paper reports
            {0, 2, 4, 6}.
        vision_candidates (`list[int]`): the same for the vision tower.
        share_prompts (`bool`): False (default, as the released code): every candidate has its own prompts, so
            a layer holds `sum(candidates)` vectors. True: one bank of `max(candidates)` vectors per layer, and
            candidate m uses its first m rows.
        prompt_init (`str`): `"released"` draws text prompts from U[0, 1) and vision prompts from N(0, 1) (the
            released supernet); `"normal"` draws both from N(0, `init_std`).
        init_std (`float`): std of the `"normal"` prompt initialisation.
        alpha_init_std (`float`): alpha starts as `alpha_init_std * N(0, 1)` (1e-3 in the released code).
        mixing (`str`): `"efficient"` scores the token keys once and combines each candidate's prompt keys
            through log-sum-exp of the partial softmax normalisers; `"naive"` runs one full attention per candidate
            (the released code's way; kept as the reference for tests and benchmarks). Same output.

    Length rule: prompts take no position, but the prompted key/value sequence of a tower may not exceed what the
    backbone was built for. Text: tokens + prompts <= `max_position_embeddings` (77), so the largest text
    candidate is at most 74 (a 3-token prompt), and the forward raises if a longer prompt would overflow. Vision:
    the largest candidate is at most the number of image tokens (CLS + patches), so prompts never outnumber them.
    A family whose text is padded to every position (SigLIP) leaves no room by construction: there only the bound
    on the candidates applies, and text attention follows the family (bidirectional on SigLIP: prompts and tokens
    see every token, the class name included).

    Example:
        >>> from peft import get_peft_model
        >>> from peft_vlprompt import DPLSearchConfig
        >>> supernet = get_peft_model(clip, DPLSearchConfig(text_candidates=[0, 2, 4, 6]))
    """

    text_candidates: list[int] = field(
        default_factory=_default_candidates,
        metadata={"help": "Prompt lengths searched in every text layer; must contain 0 (no prompt)."},
    )
    vision_candidates: list[int] = field(
        default_factory=_default_candidates,
        metadata={"help": "Prompt lengths searched in every vision layer; must contain 0 (no prompt)."},
    )
    share_prompts: bool = field(
        default=False,
        metadata={"help": "One bank of max(candidates) prompts per layer (candidate m uses its first m rows)."},
    )
    prompt_init: str = field(
        default="released",
        metadata={
            "help": "'released': text U[0,1), vision N(0,1); 'normal': both N(0, `init_std`).",
            "choices": PROMPT_INITS,
        },
    )
    init_std: float = field(default=0.02, metadata={"help": "Std of the 'normal' prompt initialisation.", "gt": 0})
    alpha_init_std: float = field(
        default=1e-3, metadata={"help": "Architecture logits start as std * N(0, 1).", "min": 0}
    )
    mixing: str = field(
        default="efficient",
        metadata={
            "help": "'efficient' (shared token scores, log-sum-exp combination) or 'naive' (one attention "
            "per candidate).",
            "choices": MIXINGS,
        },
    )

    method_name = "dpl"

    def __post_init__(self):
        super().__post_init__()
        for tower in TOWERS:
            name = f"{tower}_candidates"
            value = getattr(self, name)
            if not isinstance(value, (list, tuple)) or not value:
                raise ValueError(f"`{name}` must be a non-empty list of prompt lengths, got {value!r}")
            if any(not isinstance(n, int) or isinstance(n, bool) for n in value):
                raise ValueError(f"`{name}` must hold integers, got {value!r}")
            if any(n < 0 for n in value):
                raise ValueError(f"`{name}` must not contain negative lengths, got {list(value)!r}")
            if 0 not in value:
                raise ValueError(f"`{name}` must contain 0 (the no-prompt candidate), got {list(value)!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"`{name}` must not repeat a length, got {list(value)!r}")
            setattr(self, name, sorted(value))
        if self.text_candidates == [0] and self.vision_candidates == [0]:
            raise ValueError("nothing to search: `text_candidates` and `vision_candidates` are both [0]")
        if self.prompt_init not in PROMPT_INITS:
            raise ValueError(f"`prompt_init` must be one of {PROMPT_INITS}, got {self.prompt_init!r}")
        if self.mixing not in MIXINGS:
            raise ValueError(f"`mixing` must be one of {MIXINGS}, got {self.mixing!r}")
        if not self.init_std > 0:
            raise ValueError(f"`init_std` must be > 0, got {self.init_std!r}")
        if not self.alpha_init_std >= 0:
            raise ValueError(f"`alpha_init_std` must be >= 0, got {self.alpha_init_std!r}")

    def candidates(self, tower: str) -> list[int]:
        return getattr(self, f"{tower}_candidates")

    def searched_towers(self) -> list[str]:
        return [tower for tower in TOWERS if self.candidates(tower) != [0]]

    def target_module_names(self, backbone: Backbone) -> list[str]:
        names = []
        if "text" in self.searched_towers():
            names += [backbone.text_attention(i) for i in range(backbone.text_layers)]
        if "vision" in self.searched_towers():
            names += [backbone.vision_attention(i) for i in range(backbone.vision_layers)]
        return names

    def validate_for_backbone(self, backbone: Backbone) -> None:
        longest_text = max(self.text_candidates)
        if longest_text > backbone.max_positions - MIN_TEXT_TOKENS:
            raise ValueError(
                f"`text_candidates` has length {longest_text}, but the text tower's {backbone.max_positions} "
                f"positions allow at most {backbone.max_positions - MIN_TEXT_TOKENS} prompts (tokens + prompts <= "
                f"{backbone.max_positions}, with at least {MIN_TEXT_TOKENS} tokens)"
            )
        longest_vision = max(self.vision_candidates)
        if longest_vision > backbone.num_image_tokens:
            raise ValueError(
                f"`vision_candidates` has length {longest_vision}, more than the vision tower's "
                f"{backbone.num_image_tokens} image tokens"
            )
