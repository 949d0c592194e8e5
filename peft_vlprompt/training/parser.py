"""`examples/train.py`'s command line: argparse for `TrainArguments`, which knows exactly which flags were given.

Every flag defaults to "not given" (`argparse.SUPPRESS`), so the values the user typed are known and take precedence
over the `--config` file, the preset and the defaults. Standard library only (no torch), like `args.py`.
"""

import argparse
import logging
import typing

from .._validation import base_and_optional
from .args import COMMAND_LINE, DEFAULT_RUN, DEFAULT_RUN_SOURCE, EXPERIMENT_FLAGS, TrainArguments, cli_fields
from .cli_names import ALIASES, json_file_argv, resolve_aliases

logger = logging.getLogger(__name__)


def _to_bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _shown_default(f) -> str:
    if "shown" in f.metadata:
        shown = f.metadata["shown"]
    else:
        value = f.default_factory() if callable(f.default_factory) else f.default
        shown = str(value).lower() if isinstance(value, bool) else ("not set" if value is None else str(value))
    if f.name in DEFAULT_RUN and str(DEFAULT_RUN[f.name]) != shown:
        shown += f"; bare run: {DEFAULT_RUN[f.name]}"
    return shown


_METAVARS = {int: "N", float: "X", str: "TEXT"}


def _adder(parser: argparse.ArgumentParser, name: str):
    """`add_argument` for `--name`, also accepting `--name-with-dashes` (kept out of `--help`)."""

    def add(**kwargs):
        parser.add_argument(f"--{name}", **kwargs)
        if "_" in name:
            parser.add_argument(f"--{name.replace('_', '-')}", **(kwargs | {"help": argparse.SUPPRESS}))

    return add


def build_parser() -> argparse.ArgumentParser:
    """argparse for `TrainArguments`: every flag defaults to "not given", so the given ones are known exactly."""
    parser = argparse.ArgumentParser(
        prog="examples/train.py",
        description="Train (or evaluate zero-shot) a CLIP prompt-learning method. Precedence of every value: command "
        "line > --config file > method preset > default. Without --method/--dataset/--config (or with the default "
        "run's own values) the run is the embedded default run: "
        + ", ".join(f"--{k} {v}" for k, v in DEFAULT_RUN.items())
        + "; flags given change it.",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    hints = typing.get_type_hints(TrainArguments)
    for f in cli_fields():
        base, _ = base_and_optional(hints[f.name])
        help_text = f"{f.metadata['help']} (default: {_shown_default(f)})"
        add = _adder(parser, f.name)
        kwargs = {"dest": f.name}
        if "choices" in f.metadata:
            kwargs["choices"] = list(f.metadata["choices"])
        if base is bool:
            add(nargs="?", const=True, type=_to_bool, metavar="true|false", help=help_text, **kwargs)
            if f.default is True:
                no_help = f.metadata.get("no_help", f"Same as --{f.name} false.")
                parser.add_argument(f"--no_{f.name}", dest=f.name, action="store_false", help=no_help)
        elif typing.get_origin(base) is list:
            (item,) = typing.get_args(base)
            add(nargs="+", type=item, metavar=_METAVARS.get(item, "VALUE"), help=help_text, **kwargs)
        else:
            add(type=base, metavar=None if "choices" in kwargs else _METAVARS.get(base), help=help_text, **kwargs)
    for alias, name in ALIASES.items():  # typed as the field they stand for
        (action,) = [a for a in parser._actions if a.dest == name and f"--{name}" in a.option_strings]
        parser.add_argument(f"--{alias}", dest=alias, type=action.type, metavar=action.metavar,
                            help=f"Alias of --{name} (transformers' name).")  # fmt: skip
    return parser


def _chooses_experiment(given: dict) -> bool:
    return any(k in given and given[k] != DEFAULT_RUN.get(k) for k in EXPERIMENT_FLAGS)


def default_argv() -> list[str]:
    """`DEFAULT_RUN` as command-line flags."""
    argv = []
    for key, value in DEFAULT_RUN.items():
        argv += [f"--{key}", *str(value).split()]
    return argv


def parse_args(argv: list[str] | None) -> TrainArguments:
    """Parse `argv` (unknown flags are an error) into validated `TrainArguments` that know which values were given.

    Without a flag choosing another experiment, the run is the embedded `DEFAULT_RUN` with the given flags overriding
    its entries (`--output_dir x --seed 2` is the default run with another folder and seed).
    """
    parser = build_parser()
    given = resolve_aliases(vars(parser.parse_args(json_file_argv(list(argv or [])))))
    values, sources = {}, {}
    if not _chooses_experiment(given):
        defaults = vars(parser.parse_args(default_argv()))
        values.update(defaults)
        sources.update(dict.fromkeys(defaults, DEFAULT_RUN_SOURCE))
        kept = sorted(set(defaults) - set(given))
        logger.info(
            "running the embedded default run (DEFAULT_RUN, peft_vlprompt/training/args.py): %s%s",
            ", ".join(f"{k}={defaults[k]}" for k in kept),
            f"; from the command line: {', '.join(f'{k}={given[k]}' for k in sorted(given))}" if given else "",
        )
    values.update(given)
    sources.update(dict.fromkeys(given, COMMAND_LINE))
    args = TrainArguments(**values)
    args.sources = sources
    return args
