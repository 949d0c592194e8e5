"""Run every method on the embedded toy world and write the methods table (markdown) and a base-vs-new plot.

    python examples/toy/methods_table.py                          # all methods, seeds 1 2 3 (long: see README)
    python examples/toy/methods_table.py --methods coop prograd --seeds 1
    # a second table for another backbone, beside the first
    python examples/toy/methods_table.py --model path/to/toy_siglip --protocols base2new_night \
        --title "Methods on the toy world, toy SigLIP" --results_file examples/toy/results/methods_table_siglip.md \
        --plot_file examples/toy/results/base_vs_new_siglip.png --output_dir runs/methods_table_siglip

Protocols, on the shipped toy CLIP (or `--model`):
- base-to-new: train on the base half of `toy_objects` (16 shots), test base and new classes;
- base-to-new, night: the same on `toy_objects_night`, the domain the toy CLIP never saw in pretraining (the toy
  analogue of a specialised dataset such as EuroSAT: zero-shot is weak, the image features still separate the classes);
- transfer: train on all `toy_objects` classes, test the other domains (domain generalisation) and the
  `toy_shapes` / `toy_colors` tasks (cross-task transfer) with the same prompts.
Every method runs its paper preset unchanged (adapter settings and learning rate as published) except the schedule,
shortened for CPU to one toy schedule (`--num_epochs`, `--batch_size`, `--train_crop_scale`, as the default job), so
the table compares methods under equal budgets; it does not reproduce the papers' schedules. Finished runs are reused
(`<output_dir>/<protocol>/<method>/seed<k>/all_results.json`), so an interrupted table resumes. Each run's wall time
(loading included) is measured here and kept beside it in `methods_table_wall_time.json`; the footer sums them.
"""

import argparse
import io
import itertools
import json
import logging
import statistics
import time
from pathlib import Path

from peft_vlprompt._atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from peft_vlprompt.toy import list_domains
from peft_vlprompt.toy.registry import DEFAULT_DOMAIN, toy_dataset_name
from peft_vlprompt.training import DEFAULT_RUN
from peft_vlprompt.training import main as train_main

logger = logging.getLogger("methods_table")

METHODS = ["zeroshot", "coop", "cocoop", "prograd", "kgcoop", "ivlp", "maple", "promptsrc", "restore", "dpl",
           "clip_lora", "clip_lora+prograd", "linear_probe", "linear_probe_text"]  # fmt: skip
# table rows that are a method with extra flags
METHOD_FLAGS = {"clip_lora+prograd": ["--method", "clip_lora", "--prograd_lambda", "1.0"]}
# fitted on frozen features (L-BFGS, L2 chosen on validation): no training schedule; base accuracy only
PROBES = ("linear_probe", "linear_probe_text")
DG_TARGETS = [toy_dataset_name("objects", d) for d in list_domains() if d != DEFAULT_DOMAIN]
CROSS_TARGETS = ["toy_shapes", "toy_colors"]
DPL_SEARCH_COMMAND = (
    "python examples/dpl_search.py --dataset toy_objects --shots 16 --subsample base --num_epochs 5 "
    "--batch_size 16 --seed 1 --output_dir runs/dpl_toy"
)
# base-to-new protocols of the table: protocol name -> training dataset
BASE2NEW = {"base2new": "toy_objects", "base2new_night": toy_dataset_name("objects", "night")}
PROTOCOLS = [*BASE2NEW, "transfer"]
WALL_TIME_FILE = "methods_table_wall_time.json"  # beside the run's all_results.json, written after it
DIVERGED_FILE = "methods_table_diverged.json"  # a run stopped by a non-finite loss: its message, shown in the table
DEFAULT_CROP_SCALE = [float(v) for v in str(DEFAULT_RUN["train_crop_scale"]).split()]  # the default job's
TITLE = "Methods on the toy world"
RESULTS_DIR = Path("examples/toy/results")


def run_dir(method: str, protocol: str, seed: int, args) -> Path:
    return Path(args.output_dir) / protocol / method / f"seed{seed}"


def check_reused(method: str, protocol: str, seed: int, args) -> None:
    """A finished run is reused only if it is the run this table asks for (else a table for another model or
    schedule would silently show old runs): refused before any run starts."""
    result_file = run_dir(method, protocol, seed, args) / "all_results.json"
    if not result_file.exists():
        return
    done = json.loads(result_file.read_text())
    asked = {"model": args.model or "toy_clip", "seed": seed, "dataset": BASE2NEW.get(protocol, "toy_objects"),
             "shots": args.shots}  # fmt: skip
    if method not in (*PROBES, "zeroshot"):  # those record no schedule (num_epochs 0)
        asked |= {"num_epochs": args.num_epochs, "batch_size": args.batch_size}
    recorded = {**done, "shots": done.get("shots_requested", done.get("shots"))}
    differ = {k: (recorded.get(k), v) for k, v in asked.items() if k in recorded and recorded.get(k) != v}
    if differ:
        what = ", ".join(f"`{k}` {old!r} (asked: {new!r})" for k, (old, new) in differ.items())
        raise ValueError(f"{result_file} is a finished run with {what}: pass another --output_dir for this table, "
                         "or remove that run's folder to rerun it")  # fmt: skip


def run(method: str, protocol: str, seed: int, args, extra: list[str]) -> dict:
    out = run_dir(method, protocol, seed, args)
    result_file = out / "all_results.json"
    if result_file.exists():
        result = json.loads(result_file.read_text())
        if (out / WALL_TIME_FILE).exists():
            result["wall_s"] = json.loads((out / WALL_TIME_FILE).read_text())["wall_s"]
        return result
    if (out / DIVERGED_FILE).exists():
        return json.loads((out / DIVERGED_FILE).read_text())
    if args.only_existing:
        return None
    dataset = BASE2NEW.get(protocol, "toy_objects")
    argv = [*METHOD_FLAGS.get(method, ["--method", method]), "--dataset", dataset, "--seed", str(seed)]
    argv += ["--shots", str(args.shots), "--output_dir", str(out), "--torch_threads", str(args.torch_threads)]
    if method not in PROBES:
        argv += ["--num_epochs", str(args.num_epochs), "--batch_size", str(args.batch_size)]
        argv += ["--train_crop_scale", *map(str, args.train_crop_scale)]
    if protocol in BASE2NEW:
        argv += ["--protocol", "base2new"]
    else:
        argv += ["--protocol", "cross_dataset", "--eval_datasets", *DG_TARGETS, *CROSS_TARGETS]
    if args.model:
        argv += ["--model", args.model]
    if method != "zeroshot":  # the zeroshot rows report zero-shot CLIP; don't re-evaluate it in every run
        argv += ["--no_eval_zero_shot"]
    if method == "dpl":
        argv += ["--config", str(args.dpl_config)]
    logger.info("running %s", " ".join(argv))
    start = time.perf_counter()
    try:
        result = train_main(argv + extra)
    except FloatingPointError as e:  # the run stopped itself (nothing non-finite saved): a result of the table
        logger.warning("%s diverged: %s", out, e)
        diverged = {"diverged": str(e), "wall_s": round(time.perf_counter() - start, 2)}
        atomic_write_json(out / DIVERGED_FILE, diverged)
        return diverged
    wall_s = round(time.perf_counter() - start, 2)  # loading the data and the model included, unlike runtime_s
    atomic_write_json(out / WALL_TIME_FILE, {"wall_s": wall_s, "measured_by": "examples/toy/methods_table.py"})
    return {**result, "wall_s": wall_s}


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.1f} ± {std:.1f}"


def collect(results: dict[str, list[dict]], key, zero_shot: bool = False) -> dict[str, list[float]]:
    out = {}
    for method, runs in results.items():
        values = []
        for r in runs:
            source = r.get("zero_shot", {}) if zero_shot else r
            value = key(source)
            if value is not None:
                values.append(value)
        out[method] = values
    return out


def base2new_rows(runs_by_method: dict) -> list[str]:
    rows = ["| method | seeds | base | new | HM | time/run (s) |", "|---|---|---|---|---|---|"]
    base = collect(runs_by_method, lambda r: r.get("base_accuracy"))
    new = collect(runs_by_method, lambda r: r.get("new_accuracy"))
    hm = collect(runs_by_method, lambda r: r.get("hm"))
    for method, runs in runs_by_method.items():
        cells = f"{mean_std(base[method])} | {mean_std(new[method])} | {mean_std(hm[method])}"
        rows.append(f"| {method} | {seeds_cell(len(base[method]), runs)} | {cells} | {run_time(runs)} |")
    return rows


def seeds_cell(finished: int, runs: list[dict]) -> str:
    """The number of finished runs, and of runs stopped by a non-finite loss (which have no accuracy)."""
    diverged = sum("diverged" in r for r in runs)
    return f"{finished} ({diverged} diverged)" if diverged else str(finished)


def seconds(run: dict) -> float | None:
    """The run's wall time as this script measured it, else (a run from before) its own `runtime_s`."""
    value = run.get("wall_s", run.get("runtime_s"))
    return value if isinstance(value, (int, float)) else None


def run_time(runs: list[dict]) -> str:
    times = [t for t in map(seconds, runs) if t is not None]
    return f"{statistics.mean(times):.0f}" if times else "-"


def time_footer(results: dict[str, dict]) -> str:
    runs = [r for by_method in results.values() for method_runs in by_method.values() for r in method_runs]
    times = [t for t in map(seconds, runs) if t is not None]
    walled = sum("wall_s" in r for r in runs)
    text = f"Total time of the {len(runs)} runs above: {sum(times) / 60:.1f} min, summed over the runs"
    if walled == len(runs):
        return text + " (wall time of each run, loading included)."
    parts = [f"{walled} runs: wall time, loading included",
             f"{len(times) - walled} runs from before wall times were recorded: their `runtime_s`, training and "
             "evaluation only"]  # fmt: skip
    if len(times) < len(runs):
        parts.append(f"{len(runs) - len(times)} runs recorded no time")
    return text + f" ({'; '.join(parts)})."


def command_line(args) -> str:
    command = "python examples/toy/methods_table.py"
    if args.model:
        command += f" --model {args.model}"
    if list(args.methods) != METHODS:
        command += f" --methods {' '.join(args.methods)}"
    if list(args.protocols) != PROTOCOLS:
        command += f" --protocols {' '.join(args.protocols)}"
    command += f" --seeds {' '.join(map(str, args.seeds))}"
    if args.transfer_seeds:
        command += f" --transfer_seeds {' '.join(map(str, args.transfer_seeds))}"
    command += f" --num_epochs {args.num_epochs} --batch_size {args.batch_size} --shots {args.shots}"
    command += f" --train_crop_scale {' '.join(map(str, args.train_crop_scale))}"
    if args.title != TITLE:
        command += f' --title "{args.title}"'
    for flag, value, default in (
        ("--output_dir", args.output_dir, "runs/methods_table"),
        ("--results_file", args.results_file, RESULTS_DIR / "methods_table.md"),
        ("--plot_file", args.plot_file, RESULTS_DIR / "base_vs_new.png"),
    ):
        if Path(value) != Path(default):
            command += f" {flag} {value}"
    return command


def dpl_lengths(args) -> str:
    if "dpl" not in args.methods:
        return ""
    if not args.dpl_config.exists():
        return "DPL: no found configuration."
    found = json.loads(args.dpl_config.read_text())
    return (
        f"DPL trains the lengths in `{args.dpl_config}` (text {found['text_lengths']}, vision "
        f"{found['vision_lengths']}), found on the base classes of `toy_objects` by `{args.dpl_search_command}`."
    )


def write_table(results: dict[str, dict], args) -> str:
    model = f"the model `{args.model}`" if args.model else "the toy CLIP shipped in `peft_vlprompt/toy/toy_clip`"
    schedule = f"`--num_epochs {args.num_epochs} --batch_size {args.batch_size}`"
    crop = " ".join(map(str, args.train_crop_scale))
    lines = [
        f"# {args.title}",
        "",
        f"Produced by `{command_line(args)}` (mean ± std over seeds; accuracy in %), with {model}. Every method runs "
        "its paper preset unchanged: adapter settings as published (prompt lengths, depths, initialisation, loss "
        "weights: `peft_vlprompt/training/presets.py`, `peft_vlprompt/tuners/deep_prompt/presets.py`) and its preset "
        f"learning rate. Only the schedule is shortened for CPU, the same for every trained method: {schedule} "
        f"and the random-resized-crop range `--train_crop_scale {crop}` (the default job's). A preset depth deeper "
        "than the model is clipped to the model's blocks, as each run logs. The `seeds` column counts the runs that "
        "finished (a run stopped by a non-finite loss is counted as diverged, with no accuracy); `time/run` is their mean "
        "wall time (s). " + dpl_lengths(args),
        "",
        *([args.note, ""] if args.note else []),
    ]
    titles = {
        "base2new": "## Base-to-new (`toy_objects`, photo domain; base = first half of the sorted labels)",
        "base2new_night": "## Base-to-new, unseen domain (`toy_objects_night`: night images, never seen in "
        "pretraining)",
    }
    for protocol, title in titles.items():
        if results.get(protocol):
            lines += [title, "", *base2new_rows(results[protocol]), ""]
    transfer = results.get("transfer", {})
    if not transfer:
        return "\n".join([*lines, time_footer(results)]) + "\n"
    targets = DG_TARGETS + CROSS_TARGETS
    lines += [
        "## Transfer: train on all `toy_objects` classes (photo domain), test other domains and tasks",
        "",
        "| method | seeds | source | "
        + " | ".join(t.replace("toy_", "") for t in targets)
        + " | DG avg | cross avg | time/run (s) |",
        "|---|---|---|" + "---|" * (len(targets) + 3),
    ]
    for method, runs in transfer.items():
        source = [r["accuracy"] for r in runs if "accuracy" in r]
        cells = [
            mean_std([r["target_accuracy"][t] for r in runs if t in r.get("target_accuracy", {})]) for t in targets
        ]
        scored = [r["target_accuracy"] for r in runs if "target_accuracy" in r]  # a probe has no cross-task scores
        dg = [statistics.mean(s[t] for t in DG_TARGETS) for s in scored if all(t in s for t in DG_TARGETS)]
        cross = [statistics.mean(s[t] for t in CROSS_TARGETS) for s in scored if all(t in s for t in CROSS_TARGETS)]
        lines.append(
            f"| {method} | {seeds_cell(len(source), runs)} | {mean_std(source)} | "
            + " | ".join(cells)
            + f" | {mean_std(dg)} | {mean_std(cross)} | {run_time(runs)} |"
        )
    return "\n".join([*lines, "", time_footer(results)]) + "\n"


def plot(results: dict[str, dict], path: Path, model: str | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [p for p in BASE2NEW if results.get(p)]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5), squeeze=False)
    for ax, protocol in zip(axes[0], panels):
        for method, runs in results[protocol].items():
            base = [r["base_accuracy"] for r in runs if "base_accuracy" in r]
            new = [r["new_accuracy"] for r in runs if "new_accuracy" in r]
            if not base or not new:  # probes: no new-class classifier
                continue
            xerr = statistics.stdev(base) if len(base) > 1 else 0
            yerr = statistics.stdev(new) if len(new) > 1 else 0
            ax.errorbar(statistics.mean(base), statistics.mean(new), xerr=xerr, yerr=yerr, fmt="o", capsize=3)
            ax.annotate(method, (statistics.mean(base), statistics.mean(new)), textcoords="offset points",
                        xytext=(5, 5))  # fmt: skip
        ax.set_xlabel("base-class accuracy (%)")
        ax.set_ylabel("new-class accuracy (%)")
        on = f" ({Path(model).name})" if model else ""
        ax.set_title(f"{BASE2NEW[protocol]}{on}, base-to-new (mean ± std over seeds)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())  # a reader never sees half a plot


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=METHODS, help="Methods to run (default: all).")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument(
        "--transfer_seeds", nargs="+", type=int, default=None, help="Seeds of the transfer runs (default: --seeds)."
    )
    parser.add_argument("--num_epochs", type=int, default=20, help="The toy schedule, the same for every method.")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--shots", type=int, default=16)
    parser.add_argument("--train_crop_scale", nargs=2, type=float, default=DEFAULT_CROP_SCALE,
                        help="Random-resized-crop area range (the default job's: the 32 px toy objects fill the frame).")  # fmt: skip
    parser.add_argument("--torch_threads", type=int, default=DEFAULT_RUN["torch_threads"],
                        help="Threads per run (tiny matrices: 1 is fastest).")  # fmt: skip
    parser.add_argument("--protocols", nargs="+", default=PROTOCOLS, choices=PROTOCOLS)
    parser.add_argument("--dpl_search_command", default=DPL_SEARCH_COMMAND,
                        help="The command that wrote --dpl_config (quoted in the table).")  # fmt: skip
    parser.add_argument("--dpl_config", type=Path, default=Path("examples/toy/results/dpl_found.json"),
                        help="DeepPromptConfig found by examples/dpl_search.py on toy_objects (for --methods dpl).")  # fmt: skip
    parser.add_argument("--only_existing", action="store_true", help="Only tabulate finished runs; start none.")
    parser.add_argument("--note", default="", help="A sentence added under the table's heading.")
    parser.add_argument("--model", default=None, help="CLIP folder (default: the shipped toy CLIP).")
    parser.add_argument("--output_dir", default="runs/methods_table")
    parser.add_argument("--title", "--section", default=TITLE,
                        help="The table's heading, e.g. for a table of another backbone.")  # fmt: skip
    parser.add_argument("--results_dir", type=Path, default=RESULTS_DIR,
                        help="Folder of the default --results_file and --plot_file.")  # fmt: skip
    parser.add_argument("--results_file", type=Path, default=None,
                        help="The markdown table (default: <results_dir>/methods_table.md; another name keeps a "
                        "second table beside the first).")  # fmt: skip
    parser.add_argument("--plot_file", type=Path, default=None,
                        help="The base-vs-new plot (default: <results_dir>/base_vs_new.png; needs matplotlib, the "
                        "[plot] extra).")  # fmt: skip
    parser.add_argument("--no_plot", action="store_true", help="Write the table only.")
    args = parser.parse_args(argv)
    args.results_file = args.results_file or args.results_dir / "methods_table.md"
    args.plot_file = args.plot_file or args.results_dir / "base_vs_new.png"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if not args.no_plot and any(p in BASE2NEW for p in args.protocols):
        try:  # found now, not after hours of runs
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise ImportError(
                'the plot needs matplotlib: pip install "peft-vlprompt[plot]" (or pass --no_plot)'
            ) from e
    results: dict[str, dict] = {}
    plan = [(protocol, seed) for protocol in args.protocols if protocol in BASE2NEW for seed in args.seeds]
    if "transfer" in args.protocols:
        plan += [("transfer", seed) for seed in args.transfer_seeds or args.seeds]
    plan = sorted(plan, key=lambda p: (p[1], PROTOCOLS.index(p[0])))  # seed by seed
    for (protocol, seed), method in itertools.product(plan, args.methods):
        check_reused(method, protocol, seed, args)
    for protocol, seed in plan:
        for method in args.methods:
            if method == "dpl" and not args.dpl_config.exists():
                logger.warning("skipping dpl: %s not found (run examples/dpl_search.py first)", args.dpl_config)
                continue
            result = run(method, protocol, seed, args, [])
            if result is not None:
                results.setdefault(protocol, {}).setdefault(method, []).append(result)
            # rewrite after every run, so an interrupted table still shows exactly what finished
            atomic_write_text(args.results_file, write_table(results, args))
    table = write_table(results, args)
    atomic_write_text(args.results_file, table)
    if not args.no_plot and any(results.get(p) for p in BASE2NEW):
        plot(results, args.plot_file, args.model)
    logger.info("wrote %s\n%s", args.results_file, table)
    return results


if __name__ == "__main__":
    main()
