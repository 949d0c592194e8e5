"""The only module that touches peft internals.

peft 0.21's `register_peft_method` accepts only members of its closed `PeftType` enum, so third-party methods
first add their member to that enum (idempotent, a no-op if peft ever ships the member), then register through
the official function, which keeps its validation. `tests/test_peft_compat.py` fails loudly if peft moves.
"""

import contextlib
import json
import logging
from collections.abc import Iterator

import peft
from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
from peft.utils.peft_types import PeftType, register_peft_method

logger = logging.getLogger(__name__)

# peft versions whose enum internals and registry this module was tested against (see pyproject's pin)
TESTED_PEFT_RANGE = ((0, 21), (0, 22))


def peft_version_tuple() -> tuple[int, int]:
    major, minor = peft.__version__.split(".")[:2]
    return int(major), int(minor)


def ensure_peft_type(name: str) -> PeftType:
    """Return `PeftType[NAME]`, adding the member to peft's enum first if it is missing."""
    upper = name.upper()
    if upper in PeftType.__members__:
        return PeftType[upper]
    member = str.__new__(PeftType, upper)
    member._name_ = upper
    member._value_ = upper
    member.__objclass__ = PeftType
    # EnumType.__setattr__ refuses new members, so go through type's
    type.__setattr__(PeftType, upper, member)
    PeftType._member_names_.append(upper)
    PeftType._member_map_[upper] = member
    PeftType._value2member_map_[upper] = member
    return member


def register_method(*, name: str, config_cls: type, model_cls: type) -> PeftType:
    """Make `name` a peft method: enum member + `register_peft_method` (idempotent)."""
    peft_type = ensure_peft_type(name)
    registered = PEFT_TYPE_TO_CONFIG_MAPPING.get(peft_type)
    if registered is config_cls and PEFT_TYPE_TO_TUNER_MAPPING.get(peft_type) is model_cls:
        return peft_type
    if registered is not None:
        raise ValueError(f"peft method `{name}` is already registered with config {registered.__name__}")
    register_peft_method(name=name, config_cls=config_cls, model_cls=model_cls, prefix=model_cls.prefix)
    logger.debug("registered peft method %s", name)
    return peft_type


@contextlib.contextmanager
def accepting_peft_type(model, peft_type: PeftType) -> Iterator[None]:
    """Let `PeftModel.add_adapter`/`load_adapter` take an adapter of `peft_type` beside the model's own.

    peft refuses adapters of another type by comparing with the plain attribute `PeftModel.peft_type` (set once from
    the first adapter); callers (`peft_vlprompt.adapters`) only use this for tuners that build the same tensors.
    """
    if not isinstance(getattr(model, "peft_type", None), PeftType):
        raise RuntimeError("peft moved: `PeftModel.peft_type` is no longer the attribute `add_adapter` compares")
    saved = model.peft_type
    model.peft_type = peft_type
    try:
        yield
    finally:
        model.peft_type = saved


def name_the_file_in_config_errors() -> None:
    """Make peft's `adapter_config.json` reader name the file when its JSON is invalid (idempotent).

    `PeftModel.from_pretrained` and `AutoPeftModel.from_pretrained` read the config through
    `PeftConfigMixin.from_json_file`, whose bare `json.JSONDecodeError` says where in *some* file the syntax broke but
    not which file. The wrapper keeps peft's behaviour and only re-raises a `ValueError` (a `JSONDecodeError` is one)
    that starts with the path.
    """
    from peft.config import PeftConfigMixin

    original = PeftConfigMixin.__dict__["from_json_file"]
    if getattr(original, "_names_the_file", False):
        return
    if not isinstance(original, classmethod):
        raise RuntimeError("peft moved: `PeftConfigMixin.from_json_file` is no longer a classmethod")
    read = original.__func__

    def from_json_file(cls, path_json_file: str, **kwargs):
        try:
            return read(cls, path_json_file, **kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"adapter config {path_json_file} is not valid JSON: {e}") from e

    from_json_file.__doc__ = read.__doc__
    wrapped = classmethod(from_json_file)
    wrapped._names_the_file = True
    PeftConfigMixin.from_json_file = wrapped


name_the_file_in_config_errors()
