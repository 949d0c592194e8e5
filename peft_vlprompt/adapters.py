"""Several adapters on one model, also of sibling methods (CoOp, KgCoOp, ProGrad-CoOp).

Adapters of one method need nothing from us: `PeftModel.add_adapter` / `load_adapter` / `set_adapter` /
`delete_adapter` work as for any peft method, and `PromptClassifier` keys its cached text features by the enabled
adapters. peft refuses an adapter of another peft type; methods whose tuners build the same tensors from their configs
and differ only in the objective (a `state_family`, see `VLPromptTuner`) can still sit side by side: each adapter keeps
its own config (a KgCoOp adapter keeps `kg_weight` and `teacher_template`, and is saved back as KgCoOp).

Example:
    >>> model = PeftModel.from_pretrained(clip, "coop_adapter")           # a CoOp adapter, "default"
    >>> load_adapter(model, "kgcoop_adapter", adapter_name="kgcoop")     # a KgCoOp one beside it
    >>> model.set_adapter("kgcoop")
"""

import contextlib

from peft import PeftConfig
from peft.mapping import PEFT_TYPE_TO_TUNER_MAPPING

from ._peft_compat import accepting_peft_type

_HUB_KWARGS = ("subfolder", "revision", "cache_dir", "token", "local_files_only")


def add_adapter(model, adapter_name: str, config: PeftConfig, **kwargs) -> None:
    """`model.add_adapter(adapter_name, config)`, also for a config of a sibling method (same `state_family`)."""
    with _accepting(model, config):
        model.add_adapter(adapter_name, config, **kwargs)


def load_adapter(model, model_id: str, adapter_name: str, **kwargs):
    """`model.load_adapter(model_id, adapter_name, ...)`, also for an adapter saved by a sibling method."""
    config = PeftConfig.from_pretrained(model_id, **{k: v for k, v in kwargs.items() if k in _HUB_KWARGS})
    with _accepting(model, config):
        return model.load_adapter(model_id, adapter_name, **kwargs)


def state_family(peft_type) -> str | None:
    """The family of tensors the tuner of `peft_type` builds (None: its own, shared with no other method)."""
    return getattr(PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type), "state_family", None)


def _accepting(model, config: PeftConfig):
    own, other = getattr(model, "peft_type", None), config.peft_type
    if own is None or other == own:  # peft's own rules apply (and its own errors)
        return contextlib.nullcontext()
    family = state_family(own)
    if family is None or state_family(other) != family:
        raise ValueError(
            f"cannot add a {_name(other)} adapter beside this model's {_name(own)} adapters: they build different "
            f"tensors. Methods that may share one model: {_family_names(family) or 'none for ' + _name(own)}; "
            f"otherwise load the {_name(other)} adapter into its own PeftModel"
        )
    return accepting_peft_type(model, other)


def _family_names(family: str | None) -> str:
    if family is None:
        return ""
    return ", ".join(sorted(_name(t) for t, tuner in PEFT_TYPE_TO_TUNER_MAPPING.items()
                            if getattr(tuner, "state_family", None) == family))  # fmt: skip


def _name(peft_type) -> str:
    return getattr(peft_type, "value", str(peft_type)).lower()
