"""One validation for every field of our dataclasses (adapter configs, training arguments), whatever the value's source.

The rule of each field comes from its annotation (`int`, `float`, `bool`, `str`, `list[...]`, optionally `| None`) and
its `metadata`: `min`/`max` (inclusive), `gt` (exclusive lower bound), `choices`, and for lists `item_min` (with
`items`, the word naming the elements in the message). Floats must be finite. Errors name the field, the bad value and
what would be accepted. Standard library only: the command line validates with it before torch is imported.
"""

import dataclasses
import difflib
import math
import types
import typing


class RunRefused(ValueError):
    """A run refused by a check that needs the loaded data or model (resume against its checkpoint, a user depth
    against the model's layers): raised before training starts, so scripts end it like an argument error."""


class FieldTypeError(TypeError, ValueError):
    """A value of the wrong type (a `TypeError` that is also a `ValueError`, the class of every other bad value)."""


_TYPE_WORDS = {int: "an int", float: "a float", bool: "a bool (true/false)", str: "a str"}


def _describe(value) -> str:
    return f"{type(value).__name__} {value!r}"


def base_and_optional(annotation):
    """`(inner annotation, None allowed)` of `X | None` / `Optional[X]`; other unions give `(None, ...)` (unchecked)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        optional = len(args) < len(typing.get_args(annotation))
        return (args[0] if len(args) == 1 else None), optional
    return annotation, False


def _is_kind(value, kind) -> bool:
    if kind is bool or kind is str:
        return isinstance(value, kind)
    if isinstance(value, bool):  # True is an int to Python, never to us
        return False
    return isinstance(value, int) if kind is int else isinstance(value, (int, float))


def _check_scalar(name: str, value, kind) -> None:
    if not _is_kind(value, kind):
        raise FieldTypeError(f"`{name}` must be {_TYPE_WORDS[kind]}, got {_describe(value)}")
    if kind is float and not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}")


def _check_range(name: str, value, meta: dict, index: int | None = None) -> None:
    at = "" if index is None else f" at index {index}"
    label = f"`{name}` must contain {meta.get('items', 'values')}" if index is not None else f"`{name}` must be"
    low = meta.get("item_min") if index is not None else meta.get("min")
    if low is not None and value < low:
        raise ValueError(f"{label} >= {low}, got {value!r}{at}")
    if index is not None:
        return
    if meta.get("gt") is not None and not value > meta["gt"]:
        raise ValueError(f"{label} > {meta['gt']}, got {value!r}")
    if meta.get("max") is not None and value > meta["max"]:
        raise ValueError(f"{label} <= {meta['max']}, got {value!r}")


def check_value(name: str, value, annotation, meta: dict | None = None) -> None:
    """Raise a `ValueError` (`FieldTypeError` for a wrong type) if `value` breaks the rule of field `name`."""
    meta = meta or {}
    kind, optional = base_and_optional(annotation)
    if value is None:
        if optional or annotation is typing.Any:
            return
        raise FieldTypeError(f"`{name}` must be {_TYPE_WORDS.get(kind, 'set')}, got {_describe(value)}")
    origin = typing.get_origin(kind)
    if origin is list:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise FieldTypeError(f"`{name}` must be a list, got {_describe(value)}")
        (item_kind,) = typing.get_args(kind) or (typing.Any,)
        for i, item in enumerate(value):
            if item_kind in _TYPE_WORDS and not _is_kind(item, item_kind):
                raise FieldTypeError(
                    f"`{name}` must contain {_TYPE_WORDS[item_kind].split(' ')[1]}s, got {item!r} at index {i}"
                )
            if item_kind is float and not math.isfinite(item):
                raise ValueError(f"`{name}` must contain finite numbers, got {item!r} at index {i}")
            if item_kind in (int, float):
                _check_range(name, item, meta, index=i)
        return
    if kind not in _TYPE_WORDS:
        return
    _check_scalar(name, value, kind)
    if meta.get("choices") is not None and value not in meta["choices"]:
        raise ValueError(f"`{name}` must be one of {tuple(meta['choices'])}, got {value!r}")
    if kind in (int, float):
        _check_range(name, value, meta)


def check_fields(obj, skip: typing.Collection[str] = (), rules: typing.Mapping[str, dict] | None = None) -> None:
    """Check every dataclass field of `obj` (except `skip`) against its annotation and metadata (plus `rules[name]`,
    for rules of fields that several classes share)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        if f.name in skip or f.metadata.get("validate") is False:
            continue
        meta = {**(rules or {}).get(f.name, {}), **f.metadata}
        check_value(f.name, getattr(obj, f.name), hints.get(f.name, typing.Any), meta)


def parse_checkpointing_steps(value: str | None, name: str = "checkpointing_steps") -> int | str | None:
    """The rule of `--checkpointing_steps` (the training loop's and the DPL search's): None, 'epoch' or a positive
    integer given as a string (argparse's type); returns None, 'epoch' or the int, or raises naming the value."""
    if value is None or value == "epoch":
        return value
    if not isinstance(value, str):
        raise FieldTypeError(f"`{name}` must be a str (a positive integer such as '5', or 'epoch'), got "
                             f"{_describe(value)}")  # fmt: skip
    if not (value.isascii() and value.isdigit()) or int(value) < 1:  # "²" is a digit to str.isdigit
        raise ValueError(f"`{name}` must be a positive integer or 'epoch', got {value!r}")
    return int(value)


def check_known_keys(keys, known: typing.Collection[str], what: str) -> None:
    """Raise a `ValueError` naming every key of `keys` not in `known`, with the closest known names."""
    unknown = [k for k in keys if k not in known]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), list(known), n=3)
        parts.append(f"{key!r}" + (f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""))
    raise ValueError(f"{what}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; known fields: "
                     f"{', '.join(sorted(known))}")  # fmt: skip
