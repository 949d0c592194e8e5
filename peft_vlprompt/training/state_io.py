"""Training state as JSON + safetensors: nothing in a checkpoint is ever unpickled.

A state (an optimizer's, GPA's, the RNGs') is a tree of dicts, lists, tuples, numbers, strings and tensors.
`encode_state` writes the tree to `<name>.json` with every tensor replaced by `{"__tensor__": key}` and the tensors to
`<name>.safetensors`; `decode_state` rebuilds it and accepts nothing else (no classes, no callables), so a crafted
file can at worst fail to load. Dicts whose keys are not all plain strings (an optimizer's `{param index: state}`)
and tuples are tagged, so the tree comes back with the same key and container types.
"""

import json
import math
import random
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

_TAGS = ("__tensor__", "__dict__", "__tuple__", "__float__")


def _encode(obj: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous().clone()  # clone: safetensors refuses shared storage
        return {"__tensor__": key}
    if isinstance(obj, bool) or obj is None or isinstance(obj, (int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}  # strict JSON has no inf/nan
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, tensors, f"{where}.{k}") for k, v in obj.items()}
        return {
            "__dict__": [[_encode(k, tensors, where), _encode(v, tensors, f"{where}[{k!r}]")] for k, v in obj.items()]
        }
    if isinstance(obj, (list, tuple)):
        items = [_encode(v, tensors, f"{where}[{i}]") for i, v in enumerate(obj)]
        return {"__tuple__": items} if isinstance(obj, tuple) else items
    raise TypeError(f"state entry `{where}` has type {type(obj).__name__}, which a checkpoint cannot hold")


def _decode(tree: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return tree
    if isinstance(tree, list):
        return [_decode(v, tensors, f"{where}[{i}]") for i, v in enumerate(tree)]
    if not isinstance(tree, dict):
        raise ValueError(f"`{where}`: unexpected JSON value {tree!r}")
    tag = next((t for t in _TAGS if t in tree), None)
    if tag is None:
        return {k: _decode(v, tensors, f"{where}.{k}") for k, v in tree.items()}
    value = tree[tag]
    if len(tree) != 1:
        raise ValueError(f"`{where}`: a {tag} entry must stand alone, got keys {sorted(tree)}")
    if tag == "__tensor__":
        if value not in tensors:
            raise ValueError(f"`{where}`: tensor {value!r} is missing from the safetensors file")
        return tensors[value]
    if tag == "__float__":
        if value not in ("inf", "-inf", "nan"):
            raise ValueError(f"`{where}`: {value!r} is not a non-finite float")
        return float(value)
    if not isinstance(value, list):
        raise ValueError(f"`{where}`: {tag} must hold a list")
    if tag == "__tuple__":
        return tuple(_decode(v, tensors, f"{where}[{i}]") for i, v in enumerate(value))
    out = {}
    for pair in value:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise ValueError(f"`{where}`: {tag} entries must be [key, value] pairs")
        key = _decode(pair[0], tensors, where)
        if not isinstance(key, (str, int, float, bool, tuple)) and key is not None:
            raise ValueError(f"`{where}`: unhashable key {key!r}")
        out[key] = _decode(pair[1], tensors, f"{where}[{key!r}]")
    return out


def encode_state(name: str, obj: Any) -> dict[str, bytes]:
    """`{"<name>.json": ..., "<name>.safetensors": ...}`: the file contents holding `obj`."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _encode(obj, tensors, name)
    text = json.dumps(tree, indent=1, allow_nan=False) + "\n"
    return {f"{name}.json": text.encode("utf-8"), f"{name}.safetensors": save_tensors(tensors)}


def decode_state(name: str, files: dict[str, bytes]) -> Any:
    """The tree `encode_state(name, ...)` wrote, from the contents of its two files."""
    try:
        tensors = load_tensors(files[f"{name}.safetensors"])
        tree = json.loads(files[f"{name}.json"].decode("utf-8"))
        return _decode(tree, tensors, name)
    except KeyError as e:
        raise ValueError(f"state {name!r}: file {e.args[0]} is missing") from e
    except (UnicodeDecodeError, ValueError, RuntimeError, SafetensorError) as e:  # JSONDecodeError is a ValueError
        raise ValueError(f"state {name!r} is corrupt: {e}") from e


def rng_state() -> dict[str, Any]:
    """Python, NumPy, torch CPU (and CUDA) RNG states, as a tree `encode_state` can hold."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss_next))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((str(kind), keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    torch.set_rng_state(state["torch"].to(torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.to(torch.uint8) for s in state["cuda"]])
