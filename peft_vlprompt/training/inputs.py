"""What a run reads besides its flags: the `--config` file (merged under the command line and validated as every other
value) and the paths (model, data, checkpoint), all checked before any data or model is loaded. Standard library
only, like `args.py`: the command line runs these checks before torch is imported."""

import difflib
import json
import logging
import os
import re
import typing
from pathlib import Path

from .._validation import FieldTypeError, check_known_keys, check_value
from .args import CONFIG_FILE, TrainArguments, cli_fields
from .cli_names import ALIASES, resolve_aliases

logger = logging.getLogger(__name__)


# -- the --config file ----------------------------------------------------------------------------------------------
def read_config_file(path: str) -> tuple[dict | None, dict]:
    """`(adapter config dict, training arguments)` of a `--config` JSON file or folder.

    Accepted: a peft `adapter_config.json` (has `peft_type`), a folder holding one, an object with an
    `adapter_config` entry (a dict, or a path to such a file) next to training arguments, or an object of training
    arguments only (transformers' names accepted, as `HfArgumentParser.parse_json_file` reads `args.json`).
    """
    file = Path(path).expanduser()
    if file.is_dir():
        file = file / "adapter_config.json"
    if not file.is_file():
        raise ValueError(f"`config` file {file} does not exist")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"`config` file {file} is not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise ValueError(f"`config` file {file} must hold a JSON object, got {type(data).__name__}")
    if "peft_type" in data:
        return data, {}
    if "adapter_config" in data:
        training = {k: v for k, v in data.items() if k != "adapter_config"}
        adapter = data["adapter_config"]
        if isinstance(adapter, str):
            adapter = read_config_file(str(file.parent / adapter))[0]
        if adapter is not None and (not isinstance(adapter, dict) or "peft_type" not in adapter):
            raise ValueError(f"`config` file {file}: `adapter_config` must be an adapter config object with a "
                             f"`peft_type` (or the path of one), got {adapter!r}"[:400])  # fmt: skip
        return adapter, training
    if data and set(data) <= _training_names():
        return None, data
    typos = {k: difflib.get_close_matches(k, ["peft_type", "adapter_config"], n=1) for k in data}
    hint = "; ".join(f"{k!r} (did you mean {c[0]!r}?)" for k, c in typos.items() if c)
    unknown = sorted(set(data) - _training_names())
    raise ValueError(f"`config` file {file} has neither `peft_type` (an adapter config) nor `adapter_config` (an "
                     f"adapter config next to training arguments), and is not training arguments only (unknown: "
                     f"{unknown}){': ' + hint if hint else ''}")  # fmt: skip


def _training_names() -> set[str]:
    return ({f.name for f in cli_fields()} - {"config"}) | set(ALIASES)


def apply_config_file(args: TrainArguments) -> dict | None:
    """Merge the training arguments of `args.config` under the command line's, validated as every other value.

    Returns the adapter config dict of the file (None without `--config`). Idempotent.
    """
    if args.config is None:
        return None
    adapter, training = read_config_file(args.config)
    where = f"`config` file {args.config}"
    known = {f.name for f in cli_fields()} - {"config"}
    check_known_keys(training, known | set(ALIASES), f"{where}: training arguments")
    training = resolve_aliases(training, f"in {where}")
    if isinstance(training.get("adapter_kwargs"), dict):
        training["adapter_kwargs"] = json.dumps(training["adapter_kwargs"])
    hints = typing.get_type_hints(TrainArguments)
    explicit = args.explicit()
    values = {f.name: getattr(args, f.name) for f in cli_fields()}
    sources = dict(args.sources)
    for key, value in training.items():
        try:
            check_value(key, value, hints[key], dict(TrainArguments.__dataclass_fields__[key].metadata))
        except FieldTypeError as e:
            raise FieldTypeError(f"{where}: {e}") from None
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        if key in explicit:
            if value != values[key] and CONFIG_FILE not in args.sources.values():  # said once, not on re-application
                logger.info("--%s %s from the command line overrides %s from %s", key, values[key], value, where)
            continue
        values[key], sources[key] = value, CONFIG_FILE
    try:
        merged = TrainArguments(**values)
    except ValueError as e:
        raise type(e)(f"{e} (after merging {where} under the command line)") from None
    for f in cli_fields():
        setattr(args, f.name, getattr(merged, f.name))
    args.sources = sources
    return adapter


# -- paths, before anything is loaded ------------------------------------------------------------------------------
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def check_model_reference(model: str | None) -> None:
    """`--model` must be an existing CLIP folder (with its `config.json`) or a well-formed Hub id."""
    if model is None:
        return
    resolved = str(model)  # a Hub-id-shaped name (e.g. the toy CLIP's portable name) is resolved by the loader
    path = Path(resolved).expanduser()
    looks_local = path.exists() or path.is_absolute() or resolved.startswith((".", "~")) or resolved.count("/") > 1
    if looks_local:
        if not path.is_dir():
            raise ValueError(f"`model` folder {path} does not exist (give a local CLIP folder saved with "
                             "`save_pretrained`, or a Hub id such as openai/clip-vit-base-patch16)")  # fmt: skip
        # transformers 5 writes a processor's image settings into processor_config.json, older versions into
        # preprocessor_config.json: either holds the image processor `AutoImageProcessor` needs
        for names in (("config.json",), ("preprocessor_config.json", "processor_config.json")):
            if not any((path / name).is_file() for name in names):
                raise ValueError(f"`model` folder {path} has no {' or '.join(names)}: save the model and its processor "
                                 "there with the model's and its processor's `save_pretrained`")  # fmt: skip
    elif not _HUB_ID.match(resolved):
        raise ValueError(f"`model` {model!r} is neither a local folder nor a Hub id (owner/name, e.g. "
                         "openai/clip-vit-base-patch16)")  # fmt: skip


def check_paths(args: TrainArguments) -> None:
    """Every file or folder the run reads must exist, checked before any data or model is loaded."""
    check_model_reference(args.model)
    if args.data_dir is not None and not os.path.isdir(os.path.expanduser(args.data_dir)):
        raise FileNotFoundError(f"Data directory `data_dir` not found: {args.data_dir}")
    resume = args.resume_from_checkpoint
    if resume not in (None, "latest") and not os.path.isdir(os.path.expanduser(resume)):
        raise ValueError(f"`resume_from_checkpoint` folder {resume} does not exist")
    check_dataset_source(args)


def check_dataset_source(args: TrainArguments) -> None:
    """The folders and the class-names file of a --dataset_name/--train_dir dataset, before anything is loaded."""
    for name in ("train_dir", "validation_dir"):
        value = getattr(args, name)
        if value is not None and not os.path.isdir(os.path.expanduser(value)):
            raise ValueError(f"`{name}` folder {value} does not exist (give an imagefolder: one sub-folder of "
                             "images per class)")  # fmt: skip
    source = args.dataset_name
    if source is not None:
        local = os.path.isdir(os.path.expanduser(source))
        if not local and (source.startswith((".", "~", "/")) or source.count("/") > 1 or not _HUB_ID.match(source)):
            raise ValueError(f"`dataset_name` {source!r} is neither a local folder (an imagefolder or a `save_to_disk` "
                             "folder) nor a Hub dataset id (owner/name)")  # fmt: skip
        if local and args.dataset_config_name is not None:
            raise ValueError(f"`dataset_config_name`={args.dataset_config_name!r} would be ignored: `dataset_name` "
                             f"{source} is a local folder; configurations belong to Hub datasets")  # fmt: skip
    if args.class_names_file is not None:
        read_class_names(args.class_names_file)


def read_class_names(path: str) -> list[str]:
    """Class names in label order from a text file (one per line; blank lines skipped) or a JSON list of strings."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise ValueError(f"`class_names_file` {file} does not exist (a text file with one class name per line in "
                         "label order, or a JSON list)")  # fmt: skip
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"`class_names_file` {file} cannot be read as UTF-8 text: {e}") from None
    if file.suffix == ".json":
        try:
            names = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"`class_names_file` {file} is not valid JSON: {e}") from None
        if not isinstance(names, list) or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"`class_names_file` {file} must hold a JSON list of non-empty strings, got "
                             f"{str(names)[:200]}")  # fmt: skip
        names = [n.strip() for n in names]
    else:
        names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise ValueError(f"`class_names_file` {file} names no class")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"`class_names_file` {file} names a class more than once: {repeated[:10]}")
    return names
