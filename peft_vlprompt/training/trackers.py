"""Experiment trackers (`--with_tracking --report_to ...`) through accelerate: the trackers are checked before any
work, started before the first evaluation, and receive every evaluation's accuracies next to the training losses."""

import importlib.util
import logging

from .cli_names import TRACKER_PACKAGES
from .results import _protocol_numbers

logger = logging.getLogger(__name__)


def check_trackers(args) -> None:
    """Every tracker `--report_to` names is installed (accelerate would drop a missing one silently), and 'all'
    finds at least one; checked before anything is loaded."""
    if not args.with_tracking:
        return
    names = args.trackers()
    installed = [n for n, package in TRACKER_PACKAGES.items() if importlib.util.find_spec(package) is not None]
    if "all" in names:
        if not installed:
            raise ValueError("`with_tracking` with `report_to`='all' found no installed tracker, so nothing would be "
                             f"logged: install one (e.g. `pip install tensorboard`); accepted: "
                             f"{', '.join(TRACKER_PACKAGES)}")  # fmt: skip
        return
    missing = [n for n in names if n not in installed]
    if missing:
        raise ValueError(f"`report_to`={args.report_to!r}: {', '.join(missing)} not installed (accelerate would skip "
                         f"it): `pip install {' '.join(TRACKER_PACKAGES[n] for n in missing)}`, or choose among "
                         f"the installed: {installed or 'none'}")  # fmt: skip


def tracker_config(args) -> dict:
    """The run's scalar arguments (what trackers store as hyperparameters)."""
    return {k: v for k, v in vars(args).items() if v is not None and isinstance(v, (int, float, str, bool))}


def start_trackers(accelerator, args) -> None:
    if args.with_tracking:
        accelerator.init_trackers(args.tracker_project_name, tracker_config(args))


def evaluation_values(protocol: str, scores: dict[str, dict], names: list[str], prefix: str) -> dict[str, float]:
    """The numbers `all_results.json` reports for one evaluation (accuracy; base/new/HM; per target dataset and their
    average), flattened to scalar tags `<prefix>/<name>`."""
    out = {}
    for key, value in _protocol_numbers(protocol, scores, names).items():
        if isinstance(value, dict):
            out.update({f"{prefix}/{key}/{name}": float(v) for name, v in value.items()})
        else:
            out[f"{prefix}/{key}"] = float(value)
    return out


def log_evaluation(accelerator, args, scores: dict[str, dict] | None, names: list[str], step: int, prefix: str):
    """Log one evaluation's accuracies (`prefix` 'eval' for the trained adapter, 'zero_shot' for zero-shot CLIP)."""
    if not args.with_tracking or scores is None:
        return
    values = evaluation_values(args.protocol, scores, names, prefix)
    accelerator.log(values, step=step)
    logger.debug("logged to the trackers at step %d: %s", step, values)
