"""The DPL supernet layer: a wrapper around one CLIP attention module that mixes prefix prompts of several lengths."""

import torch
from torch import nn

from ...backbones import Backbone
from ..base import VLPromptLayer
from .config import DPLSearchConfig
from .mixing import efficient_mixture, naive_mixture, token_bias


def candidate_segments(candidates: list[int], share_prompts: bool) -> list[tuple[int, int]]:
    """(start row, length) of each candidate's prompts inside the layer's prompt tensor."""
    if share_prompts:
        return [(0, n) for n in candidates]
    starts = [sum(candidates[:i]) for i in range(len(candidates))]
    return list(zip(starts, candidates))


def prompt_rows(candidates: list[int], share_prompts: bool) -> int:
    return max(candidates) if share_prompts else sum(candidates)


def membership(segments: list[tuple[int, int]], rows: int) -> torch.Tensor:
    """(rows, C - 1) bool: prompt row t belongs to candidate c >= 1 (candidate 0 has no prompts)."""
    members = torch.zeros(rows, len(segments) - 1, dtype=torch.bool)
    for c, (start, count) in enumerate(segments[1:]):
        members[start : start + count, c] = True
    return members


def initial_prompts(config: DPLSearchConfig, tower: str, rows: int, width: int, like: torch.Tensor) -> torch.Tensor:
    prompts = torch.empty(rows, width, device=like.device, dtype=torch.float32)
    if config.prompt_init == "normal":
        nn.init.normal_(prompts, std=config.init_std)
    elif tower == "text":  # the released supernet: text U[0, 1), vision N(0, 1)
        nn.init.uniform_(prompts, 0.0, 1.0)
    else:
        nn.init.normal_(prompts, std=1.0)
    return prompts.to(like.dtype)


class SupernetAttention(VLPromptLayer):
    """Wraps a `CLIPAttention`: output = sum_m softmax(alpha)_m * Attn(Q=LN1(x), K/V=LN1([x; P^(m)])).

    The wrapped module receives LN1(x) as usual; the candidate prompts are normed with the same LayerNorm (a plain
    reference set by the tuner, not a submodule) and projected with the frozen k/v projections. Text prompts are
    visible to every token (the causal mask gets all-visible prompt columns); vision prompts are extra keys after
    the patches. Only the first active adapter is used. CLIP's attention dropout (0 in every released checkpoint)
    is not applied.

    Input: `hidden_states` (B, L, width) = LN1(x), `attention_mask` as transformers passes it. Output: the tuple
    `(attention output (B, L, width), None)` of `CLIPAttention`.
    """

    adapter_layer_names = ("dpl_alpha", "dpl_prompts")
    other_param_names = ("dpl_candidates", "dpl_segments", "dpl_members", "dpl_mixing")

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        super().__init__(base_layer, **kwargs)
        self.dpl_alpha = nn.ParameterDict()
        self.dpl_prompts = nn.ParameterDict()
        self.dpl_candidates: dict[str, list[int]] = {}
        self.dpl_segments: dict[str, list[tuple[int, int]]] = {}
        self.dpl_members: dict[str, torch.Tensor] = {}
        self.dpl_mixing: dict[str, str] = {}
        self.tower = ""
        self.layer_index = -1
        self.target_key = ""
        self.max_positions = 0
        self.causal = False  # text of a causal family (CLIP); SigLIP's text and every vision tower are bidirectional
        self.fills_positions = False  # text padded to every position (SigLIP): the run-time length rule cannot hold

    def update_layer(self, adapter_name: str, config: DPLSearchConfig, backbone: Backbone, key: str) -> None:
        self.tower = backbone.tower_of(key)
        self.layer_index = backbone.layer_index(key)
        self.target_key = key
        self.max_positions = backbone.max_positions
        self.causal = self.tower == "text" and backbone.text_is_causal
        self.fills_positions = self.tower == "text" and backbone.text_padding == "max_length"
        candidates = list(config.candidates(self.tower))
        segments = candidate_segments(candidates, config.share_prompts)
        rows = prompt_rows(candidates, config.share_prompts)
        like = self._reference_weight()
        alpha = config.alpha_init_std * torch.randn(len(candidates), device=like.device)
        self.dpl_alpha[adapter_name] = nn.Parameter(alpha)
        self.dpl_prompts[adapter_name] = nn.Parameter(
            initial_prompts(config, self.tower, rows, self.base_layer.embed_dim, like)
        )
        self.dpl_candidates[adapter_name] = candidates
        self.dpl_segments[adapter_name] = segments
        self.dpl_members[adapter_name] = membership(segments, rows).to(like.device)
        self.dpl_mixing[adapter_name] = config.mixing
        self.set_adapter(self.active_adapters)

    def set_norm(self, norm: nn.Module) -> None:
        # a plain attribute: the LayerNorm belongs to the base model, so it must not be saved as adapter state
        object.__setattr__(self, "_dpl_norm", norm)

    def candidate_prompts(self, adapter_name: str, length: int) -> torch.Tensor:
        """The raw (un-normed) prompts of candidate `length`, shape (length, width)."""
        candidates = self.dpl_candidates[adapter_name]
        if length not in candidates:
            raise ValueError(f"length {length} is not a candidate of {self.target_key} ({candidates})")
        start, count = self.dpl_segments[adapter_name][candidates.index(length)]
        return self.dpl_prompts[adapter_name][start : start + count]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        active = self.enabled_adapters(self.dpl_alpha)
        if not active:
            return self.base_layer(hidden_states, attention_mask=attention_mask, **kwargs)
        name = active[0]
        length = hidden_states.shape[1]
        longest = self.dpl_candidates[name][-1]
        if self.tower == "text" and not self.fills_positions and length + longest > self.max_positions:
            raise ValueError(
                f"the text prompt has {length} tokens and DPL candidates up to {longest} prefix prompts: "
                f"{length + longest} keys exceed the text tower's {self.max_positions} positions; shorten the prompt "
                "or the candidate lengths"
            )
        attention = self.base_layer
        norm = getattr(self, "_dpl_norm", None)
        if norm is None:
            raise RuntimeError(
                f"{self.target_key}: the supernet layer was not linked to its LayerNorm (create it with peft)"
            )
        weights = self.dpl_alpha[name].float().softmax(-1)
        prompts = norm(self.dpl_prompts[name].to(hidden_states.dtype))
        bias = token_bias(attention_mask, self.causal, length, hidden_states.device)
        if self.dpl_mixing[name] == "naive":
            out = naive_mixture(attention, hidden_states, prompts, weights, self.dpl_segments[name], bias)
        else:
            members = self.dpl_members[name].to(hidden_states.device)
            out = efficient_mixture(attention, hidden_states, prompts, weights, members, bias)
        return out, None
