"""Aggregate `all_results.json` files of runs over seeds into markdown tables like the papers' (mean ± std).

    python examples/aggregate_results.py runs/            # every all_results.json under runs/
    python examples/aggregate_results.py runs/ --output results.md
    python examples/aggregate_results.py runs/ --use_evaluate  # base/new/HM by the shipped `evaluate` module

One table per (protocol, shots): base-to-new gives Base / New / HM per method and dataset (HM of the mean base and
new accuracies, as the papers compute it) plus the average over datasets; few-shot gives the accuracy per method
and dataset; cross-dataset / domain generalisation give the source and each target per method. Std is the sample
standard deviation over seeds (0 for a single seed). A "zero-shot CLIP" row/column comes from the zero-shot numbers
the runs recorded (runs of `--method zeroshot` when present).
"""

import argparse
import functools
import importlib.util
import json
import math
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ZERO_SHOT = "zero-shot CLIP"


def load_runs(paths: list[str]) -> list[dict]:
    runs = []
    for root in paths:
        root = Path(root)
        files = [root] if root.is_file() else sorted(root.rglob("all_results.json"))
        for file in files:
            run = read_run(file)
            run["_file"] = str(file)
            runs.append(run)
    return runs


# keys every results file needs, and those its protocol's table reads
REQUIRED = ("method", "dataset", "protocol", "seed")
PROTOCOL_KEYS = {"base2new": ("base_accuracy", "new_accuracy"), "few_shot": ("accuracy",)}


def read_run(file: Path) -> dict:
    """One `all_results.json`, checked: errors name the file and what is wrong with it."""
    try:
        run = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"results file {file} is not valid JSON ({e}); delete it or rerun that experiment") from e
    if not isinstance(run, dict):
        raise ValueError(f"results file {file} must hold a JSON object, got {type(run).__name__}")
    missing = [k for k in REQUIRED + PROTOCOL_KEYS.get(run.get("protocol"), ()) if k not in run]
    if missing:
        raise ValueError(f"results file {file} misses {missing} (protocol {run.get('protocol')!r})")
    for key in PROTOCOL_KEYS.get(run["protocol"], ()):
        value = run[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"results file {file}: `{key}` must be a finite number, got {value!r}")
    return run


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def cell(values: list[float]) -> str:
    if not values:
        return "-"
    mean, std = mean_std(values)
    return f"{mean:.2f} ± {std:.2f}"


def hm(base: float, new: float) -> float:
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


def papers_average(base: list[float], new: list[float]) -> tuple[float, float, float]:
    """Mean base, mean new over datasets and the HM of those means (not the mean of per-dataset HMs)."""
    b, n = statistics.fmean(base), statistics.fmean(new)
    return b, n, hm(b, n)


def evaluate_average():
    """`papers_average` computed by the package's `evaluate` module base2new (its config "accuracies")."""
    import evaluate

    import peft_vlprompt

    module = evaluate.load(peft_vlprompt.metrics_module_path("base2new"), "accuracies", keep_in_memory=True)

    def average(base: list[float], new: list[float]) -> tuple[float, float, float]:
        out = module.compute(base_accuracy=base, new_accuracy=new)
        return out["base_accuracy"], out["new_accuracy"], out["hm"]

    return average


def _with_zero_shot(runs: list[dict]) -> list[dict]:
    """Add pseudo-runs of zero-shot CLIP from the runs' recorded zero-shot numbers (one per dataset and seed)."""
    if any(r["method"] == "zeroshot" for r in runs):
        return [dict(r, method=ZERO_SHOT) if r["method"] == "zeroshot" else r for r in runs]
    seen, extra = set(), []
    for r in runs:
        key = (r["dataset"], r["protocol"], r.get("shots"), r["seed"])
        if "zero_shot" in r and key not in seen:
            seen.add(key)
            extra.append({**r, **r["zero_shot"], "method": ZERO_SHOT})
    return runs + extra


def base2new_table(runs: list[dict], average=papers_average) -> str:
    """One small table per dataset (rows: methods; Base / New / HM), then the average over datasets."""
    methods = sorted({r["method"] for r in runs}, key=lambda m: (m != ZERO_SHOT, m))
    datasets = sorted({r["dataset"] for r in runs})
    by = defaultdict(lambda: {"base": [], "new": []})
    for r in runs:
        by[(r["method"], r["dataset"])]["base"].append(r["base_accuracy"])
        by[(r["method"], r["dataset"])]["new"].append(r["new_accuracy"])
    header = ["| Method | Base | New | HM |", "|---|---|---|---|"]
    blocks = []
    for d in datasets:
        lines = [f"**{d}**", "", *header]
        for m in methods:
            v = by.get((m, d))
            if v:
                h = average([statistics.fmean(v["base"])], [statistics.fmean(v["new"])])[2]
                lines.append(f"| {m} | {cell(v['base'])} | {cell(v['new'])} | {h:.2f} |")
        blocks.append("\n".join(lines))
    if len(datasets) > 1:
        lines = [f"**Average over {len(datasets)} datasets**", "", *header]
        for m in methods:
            if not all((m, d) in by for d in datasets):
                continue  # an average over other datasets would not be comparable
            b, n, h = average([statistics.fmean(by[(m, d)]["base"]) for d in datasets],
                              [statistics.fmean(by[(m, d)]["new"]) for d in datasets])  # fmt: skip
            lines.append(f"| {m} | {b:.2f} | {n:.2f} | {h:.2f} |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def few_shot_table(runs: list[dict]) -> str:
    methods = sorted({r["method"] for r in runs}, key=lambda m: (m != ZERO_SHOT, m))
    datasets = sorted({r["dataset"] for r in runs})
    by = defaultdict(list)
    for r in runs:
        by[(r["method"], r["dataset"])].append(r["accuracy"])
    lines = ["| Dataset | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for d in datasets:
        lines.append("| " + " | ".join([d] + [cell(by.get((m, d), [])) for m in methods]) + " |")
    if len(datasets) > 1:
        row = [f"**Average ({len(datasets)})**"]
        for m in methods:
            means = [statistics.fmean(by[(m, d)]) for d in datasets if by.get((m, d))]
            row.append(f"{statistics.fmean(means):.2f}" if len(means) == len(datasets) else "-")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def transfer_table(runs: list[dict]) -> str:
    methods = sorted({r["method"] for r in runs}, key=lambda m: (m != ZERO_SHOT, m))
    sources = sorted({r["dataset"] for r in runs})
    targets = sorted({t for r in runs for t in r.get("target_accuracy", {})})
    lines = ["| Method | Source | " + " | ".join(targets) + " | Average |", "|---|---|" + "---|" * (len(targets) + 1)]
    for m in methods:
        for s in sources:
            rs = [r for r in runs if r["method"] == m and r["dataset"] == s]
            if not rs:
                continue
            row = [m, f"{s}: {cell([r['accuracy'] for r in rs])}"]
            row += [cell([r["target_accuracy"][t] for r in rs if t in r.get("target_accuracy", {})]) for t in targets]
            row.append(cell([r["average_target_accuracy"] for r in rs if "average_target_accuracy" in r]))
            lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def aggregate(runs: list[dict], use_evaluate: bool = False) -> str:
    """The markdown tables of `runs` (all_results.json dicts); `use_evaluate`: base/new/HM by `evaluate_average`."""
    runs = _with_zero_shot(runs)
    groups = defaultdict(list)
    for r in runs:
        groups[(r["protocol"], r.get("shots"))].append(r)
    out, average = [], evaluate_average() if use_evaluate else papers_average
    for (protocol, shots), rs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1]))):
        seeds = sorted({r["seed"] for r in rs})
        out.append(f"### {protocol}, {shots} shots (seeds {', '.join(map(str, seeds))})\n")
        base2new = functools.partial(base2new_table, average=average)
        table = {"base2new": base2new, "few_shot": few_shot_table}.get(protocol, transfer_table)
        out.append(table(rs) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("paths", nargs="+", help="Run folders (searched recursively) or all_results.json files.")
    parser.add_argument("--output", default=None, help="Write the markdown here instead of printing it.")
    parser.add_argument("--use_evaluate", action="store_true",
                        help="Compute base/new/HM with the package's `evaluate` module base2new (same numbers).")  # fmt: skip
    args = parser.parse_args(argv)
    if args.use_evaluate and importlib.util.find_spec("evaluate") is None:
        parser.error("--use_evaluate needs `evaluate`: pip install 'peft-vlprompt[evaluate]'")
    try:
        runs = load_runs(args.paths)
    except ValueError as e:
        parser.error(str(e))
    if not runs:
        parser.error(f"no all_results.json under {args.paths}")
    text = aggregate(runs, use_evaluate=args.use_evaluate)
    if args.output:
        tmp = Path(f"{args.output}.tmp")  # complete-or-absent: a reader never sees half a table
        tmp.write_text(text)
        os.replace(tmp, args.output)
    else:
        sys.stdout.write(text)
    return text


if __name__ == "__main__":
    main()
