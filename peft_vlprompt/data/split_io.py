"""Reading, checking and atomically writing CoOp split files (`{"train"|"val"|"test": [[relpath, label, classname]]}`)."""

import json
import os
from pathlib import Path

from .._atomic import atomic_write_text

# (path relative to the split root, label, class name), CoOp's `[relpath, label, classname]` entry.
Item = tuple[str, int, str]


def atomic_write_json(path: str | os.PathLike, obj) -> None:
    """Writes `obj` as JSON to `path` through a temp file in the same folder and `os.replace`, so readers never
    see a half-written file (`peft_vlprompt._atomic`: the file gets the umask's mode, not mkstemp's 0600)."""
    atomic_write_text(path, json.dumps(obj))


def list_visible(path: Path, *, dirs: bool) -> list[str]:
    """Sorted names of the non-hidden sub-folders (`dirs=True`) or files (`dirs=False`) of `path`.

    Sorted so that a rebuilt split does not depend on the file system's listing order."""
    with os.scandir(path) as it:
        return sorted(e.name for e in it if not e.name.startswith(".") and e.is_dir() == dirs)


def _entry(raw, where: str) -> Item:
    if (
        not isinstance(raw, (list, tuple))
        or len(raw) != 3
        or not isinstance(raw[0], str)
        or not isinstance(raw[1], int)
        or isinstance(raw[1], bool)
        or not isinstance(raw[2], str)
    ):
        raise ValueError(f"{where} must be [relpath: str, label: int, classname: str], got {raw!r}.")
    if raw[1] < 0:
        raise ValueError(f"{where} has a negative label: {raw!r}.")
    return raw[0], raw[1], raw[2]


def read_split_file(
    path: str | os.PathLike, splits: tuple[str, ...] = ("train", "val", "test"), *, contiguous: bool = True
) -> dict[str, list[Item]]:
    """Reads and checks a CoOp split file (or a few-shot cache with `splits=("train", "val")`).

    Raises `ValueError` naming the file and what is wrong: invalid JSON, a missing split, a malformed entry, or a
    label whose class name differs between entries."""
    path = Path(path)
    try:
        with open(path) as f:
            raw = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"Split file {path} is not valid JSON: {e}.") from e
    if not isinstance(raw, dict):
        raise ValueError(
            f"Split file {path} must hold a JSON object with keys {list(splits)}, got {type(raw).__name__}."
        )
    out = {}
    for name in splits:
        if name not in raw:
            raise ValueError(f"Split file {path} has no '{name}' list (keys found: {sorted(raw)}).")
        if not isinstance(raw[name], list):
            raise ValueError(f"Split file {path}: '{name}' must be a list of [relpath, label, classname] entries.")
        out[name] = [_entry(e, f"Split file {path}: '{name}' entry {i}") for i, e in enumerate(raw[name])]
    check_items(out, source=f"Split file {path}", contiguous=contiguous)
    return out


def check_items(splits: dict[str, list[Item] | None], *, source: str, contiguous: bool = True) -> list[str]:
    """Checks that every label has one class name across all splits and (when `contiguous`) that the labels are
    0..n-1; returns the class names in label order."""
    names: dict[int, tuple[str, str]] = {}
    for split, items in splits.items():
        for i, (_, label, classname) in enumerate(items or ()):
            seen = names.setdefault(label, (classname, f"'{split}' entry {i}"))
            if seen[0] != classname:
                raise ValueError(
                    f"{source}: label {label} has two class names, {seen[0]!r} ({seen[1]}) and {classname!r} "
                    f"('{split}' entry {i})."
                )
    if not names:
        raise ValueError(f"{source} holds no entries.")
    if contiguous:
        missing = sorted(set(range(max(names) + 1)) - set(names))
        if missing:
            raise ValueError(f"{source}: labels must be 0..{max(names)} without gaps; missing {missing[:10]}.")
    return [names[label][0] for label in sorted(names)]


def items_to_json(splits: dict[str, list[Item]]) -> dict[str, list[list]]:
    return {name: [[p, y, c] for p, y, c in items] for name, items in splits.items()}
