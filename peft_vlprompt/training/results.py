"""`all_results.json`: the run's accuracies per protocol next to zero-shot CLIP's, and the run's settings."""

import logging
from collections import Counter

from .build import peft_type_name
from .metrics import harmonic_mean

logger = logging.getLogger(__name__)


def shots_record(requested: int, task) -> dict:
    """The shots actually trained on: `{"shots": K}` when every class had K images; else what each class got (as
    CoOp, a class with fewer images uses all it has): `shots` = the count, or "min-max" when classes differ, next to
    `shots_requested` and the classes that fell short."""
    if requested == -1 or task.train is None or len(task.train) == 0:
        return {"shots": requested}
    counts = Counter(int(y) for y in task.train["label"])
    per_class = [counts.get(i, 0) for i in range(task.num_classes)]
    if min(per_class) >= requested:
        return {"shots": requested}
    low, high = min(per_class), max(per_class)
    short = {task.classnames[i]: n for i, n in enumerate(per_class) if n < requested}
    logger.warning("%d of %d classes had fewer than the %d shots asked for: the results record shots=%s (per class "
                   "%s)", len(short), len(per_class), requested, low if low == high else f"{low}-{high}",
                   short)  # fmt: skip
    return {"shots": low if low == high else f"{low}-{high}", "shots_requested": requested,
            "classes_with_fewer_shots": short}  # fmt: skip


def _protocol_numbers(protocol: str, scores: dict[str, dict], names: list[str]) -> dict:
    acc = {name: round(scores[name]["accuracy"], 4) for name in names}
    if protocol == "base2new":
        base, new = acc["base"], acc["new"]
        return {"base_accuracy": base, "new_accuracy": new, "hm": round(harmonic_mean(base, new), 4)}
    if protocol == "few_shot":
        return {"accuracy": acc["test"]}
    source, targets = names[0], names[1:]
    out = {"accuracy": acc[source], "target_accuracy": {t: acc[t] for t in targets}}
    if targets:
        out["average_target_accuracy"] = round(sum(acc[t] for t in targets) / len(targets), 4)
    return out


def assemble_results(
    args, spec, config, data, zero_shot, trained, global_step: int, runtime_s: float, num_processes: int = 1
) -> dict:
    """`{"summary": all_results.json content, "per_class": per-class accuracies}`."""
    names = [split.name for split in data.eval_splits]
    summary = {
        "method": spec.name,
        "peft_type": None if config is None else peft_type_name(config.peft_type),
        "dataset": data.train.name,
        "protocol": args.protocol,
        "seed": args.seed,
        **shots_record(args.shots, data.train),
        "model": args.model or "toy_clip",
        "template": data.train.template,
        "num_epochs": args.num_epochs if spec.trains else 0,
        "lr": args.lr if spec.trains else None,
        "batch_size": args.batch_size if spec.trains else None,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "num_processes": num_processes,
        "global_step": global_step,
        "num_train_examples": 0 if data.train.train is None else len(data.train.train),
        "runtime_s": round(runtime_s, 2),
    }
    per_class = {}
    if trained is not None:
        summary.update(_protocol_numbers(args.protocol, trained, names))
        per_class["trained"] = {name: trained[name]["per_class_accuracy"] for name in names}
    if zero_shot is not None:
        summary["zero_shot"] = _protocol_numbers(args.protocol, zero_shot, names)
        per_class["zero_shot"] = {name: zero_shot[name]["per_class_accuracy"] for name in names}
        if trained is None:  # the zero-shot method reports its numbers at the top level too
            summary.update(summary["zero_shot"])
    per_class["classnames"] = {split.name: split.classnames for split in data.eval_splits}
    return {"summary": summary, "per_class": per_class}


def format_results(summary: dict) -> str:
    """A short human-readable table of the trained numbers next to zero-shot CLIP's."""
    zs = summary.get("zero_shot", {})
    rows = []
    for key in ("accuracy", "base_accuracy", "new_accuracy", "hm", "average_target_accuracy"):
        if key in summary or key in zs:
            rows.append((key, summary.get(key), zs.get(key)))
    for name, value in summary.get("target_accuracy", {}).items():
        rows.append((f"target:{name}", value, zs.get("target_accuracy", {}).get(name)))

    def fmt(v):
        return "   -  " if v is None else f"{v:6.2f}"

    lines = [f"{summary['method']} on {summary['dataset']} ({summary['protocol']}, {summary['shots']} shots, "
             f"seed {summary['seed']})", f"{'':24s} {'trained':>7s} {'zero-shot':>9s}"]  # fmt: skip
    lines += [f"{name:24s} {fmt(a):>7s} {fmt(b):>9s}" for name, a, b in rows]
    return "\n".join(lines)
