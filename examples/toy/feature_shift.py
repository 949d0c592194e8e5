"""Per-layer feature shift of trained adapters, per modality (the analogue of RESTORE's Fig. 3-4: IVLP vs RESTORE).

    python examples/toy/feature_shift.py                                   # ivlp and restore, seeds 1 2 3
    python examples/toy/feature_shift.py --methods ivlp maple restore --protocol base2new_night --seeds 1

Reads the runs `examples/toy/methods_table.py` leaves in `<runs_dir>/<protocol>/<method>/seed<k>/` (the adapter in
`adapter/`, the run's dataset, model and template in `all_results.json`), and measures, for each block of each tower,
`peft_vlprompt.diagnostics.feature_shift`: the mean relative change of the block's token features when the adapter is
switched on. Inputs are fixed: the run's class prompts (the classes it was trained on) and the first
`--images_per_class` test images of each of those classes, in the test split's order. The shifts are averaged over
seeds and written to `feature_shift.json` (numbers, per-seed values and the command) and `feature_shift.png` (text
and vision panels, shift vs block, one line per method).
"""

import argparse
import io
import json
import logging
import math
import statistics
import sys
from pathlib import Path

import torch

logger = logging.getLogger("feature_shift")

RESULTS = Path("examples/toy/results")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=["ivlp", "restore"], help="Method folders to compare.")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--protocol", default="base2new", help="Protocol folder of the methods table's runs.")
    parser.add_argument("--runs_dir", type=Path, default=Path("runs/methods_table"),
                        help="The methods table's --output_dir.")  # fmt: skip
    parser.add_argument("--images_per_class", type=int, default=10, help="Test images per class (the first ones).")
    parser.add_argument("--batch_size", type=int, default=64, help="Images per vision-tower pass.")
    parser.add_argument("--model", default=None,
                        help="Base model folder (default: the model each run recorded in all_results.json).")  # fmt: skip
    parser.add_argument("--data_dir", default=None, help="Folder of the datasets (not needed for the toy world).")
    parser.add_argument("--json_file", type=Path, default=RESULTS / "feature_shift.json")
    parser.add_argument("--plot_file", type=Path, default=RESULTS / "feature_shift.png")
    parser.add_argument("--no_plot", action="store_true", help="Write the JSON only (no matplotlib needed).")
    parser.add_argument("--torch_threads", type=int, default=1, help="Threads (tiny matrices: 1 is fastest).")
    args = parser.parse_args(argv)
    args.command = "python examples/toy/feature_shift.py " + " ".join(sys.argv[1:] if argv is None else argv)
    return args


def check(args) -> list[tuple[str, int, Path, dict]]:
    """Every run asked for, with its `all_results.json`, before any model is loaded."""
    if args.images_per_class < 1:
        raise ValueError(f"`--images_per_class` must be >= 1, got {args.images_per_class}")
    if args.batch_size < 1:
        raise ValueError(f"`--batch_size` must be >= 1, got {args.batch_size}")
    if not args.no_plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError as e:
            raise ImportError(
                'the plot needs matplotlib: pip install "peft-vlprompt[plot]" (or pass --no_plot)'
            ) from e
    runs, missing = [], []
    for method in args.methods:
        for seed in args.seeds:
            run_dir = args.runs_dir / args.protocol / method / f"seed{seed}"
            results, adapter = run_dir / "all_results.json", run_dir / "adapter" / "adapter_config.json"
            if not results.is_file() or not adapter.is_file():
                missing.append(str(run_dir))
                continue
            runs.append((method, seed, run_dir, json.loads(results.read_text())))
    if missing:
        raise FileNotFoundError(
            f"no finished run (all_results.json and adapter/adapter_config.json) in: {', '.join(missing)}; run "
            "examples/toy/methods_table.py with these methods, seeds and protocol first, or pass the --runs_dir, "
            "--protocol, --methods and --seeds of runs that exist"
        )
    datasets = {summary["dataset"] for *_, summary in runs}
    if len(datasets) > 1:
        raise ValueError(
            f"the runs were trained on different datasets {sorted(datasets)}: compare runs of one protocol"
        )
    return runs


def fixed_inputs(summary: dict, image_processor, images_per_class: int, data_dir: str | None):
    """`(classnames, template, pixel_values, images per class)`: the run's classes and the first test images of each."""
    from peft_vlprompt.data import load_task
    from peft_vlprompt.data.transforms import make_transform

    subsample = "base" if summary["protocol"] == "base2new" else "all"  # base-to-new trains on the base half
    shots = summary.get("shots_requested", summary["shots"])  # the run's own (cached) few-shot split; test is fixed
    task = load_task(summary["dataset"], data_dir, shots=shots, seed=summary["seed"], subsample=subsample)
    taken: dict[int, list[int]] = {}
    for i, label in enumerate(task.test["label"]):
        if len(taken.setdefault(int(label), [])) < images_per_class:
            taken[int(label)].append(i)
    indices = [i for label in sorted(taken) for i in taken[label]]
    split = task.test.select(indices).with_transform(make_transform(image_processor, train=False))
    pixels = torch.stack(split[:]["pixel_values"])
    counts = {task.classnames[label]: len(taken[label]) for label in sorted(taken)}
    return task.classnames, summary["template"], pixels, counts


def run_shift(run_dir: Path, summary: dict, args) -> dict:
    """`{"text": [...], "vision": [...], "images": {class: n}}` of one trained adapter."""
    from peft import PeftModel

    from peft_vlprompt import PromptClassifier
    from peft_vlprompt.diagnostics import feature_shift
    from peft_vlprompt.training.build import load_clip
    from peft_vlprompt.tuners.base import text_rows_for_classes

    model_name = args.model or (None if summary["model"] == "toy_clip" else summary["model"])
    clip, tokenizer, image_processor = load_clip(model_name)
    model = PeftModel.from_pretrained(clip, str(run_dir / "adapter")).eval()
    classnames, template, pixels, counts = fixed_inputs(summary, image_processor, args.images_per_class,
                                                            args.data_dir)  # fmt: skip
    clf = PromptClassifier(model, tokenizer, classnames, template=template)
    config = clf.prompt_config()
    input_ids = clf.tokenize(clf.prompts(config), config)
    with torch.no_grad(), text_rows_for_classes(model, None, clf.text_start):  # prompts placed after the start token
        text = feature_shift(model, input_ids=input_ids)["text"]
        # every image has the same number of tokens, so the size-weighted mean of the chunks is the mean over all
        vision = sum(
            feature_shift(model, pixel_values=chunk)["vision"] * len(chunk) for chunk in pixels.split(args.batch_size)
        ) / len(pixels)
    return {"text": text.tolist(), "vision": vision.tolist(), "images": counts}


def summarise(per_seed: dict[int, dict]) -> dict:
    out = {"seeds": sorted(per_seed)}
    for tower in ("text", "vision"):
        layers = list(zip(*(per_seed[s][tower] for s in sorted(per_seed))))
        out[tower] = {
            "mean": [statistics.mean(v) for v in layers],
            "std": [statistics.stdev(v) if len(v) > 1 else 0.0 for v in layers],
            "per_seed": {str(s): per_seed[s][tower] for s in sorted(per_seed)},
        }
    return out


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from peft_vlprompt._atomic import atomic_write_bytes

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5))
    for ax, tower in zip(axes, ("text", "vision")):
        for method, numbers in report["methods"].items():
            mean, std = numbers[tower]["mean"], numbers[tower]["std"]
            blocks = range(1, len(mean) + 1)
            lrs = ", ".join(f"{lr:g}" for lr in numbers.get("lr", []))
            ax.errorbar(blocks, mean, yerr=std, marker="o", capsize=3, label=f"{method} (lr {lrs})" if lrs else method)
        ax.set_xlabel(f"{tower} encoder block")
        ax.set_ylabel("feature shift ‖h(prompted) − h(base)‖ / ‖h(base)‖")
        ax.set_title(f"{tower} tower")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend()
    seeds = ", ".join(map(str, report["seeds"]))
    fig.suptitle(
        f"Per-block feature shift on {report['dataset']} ({report['protocol']}; mean ± std over seeds {seeds})"
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    runs = check(args)
    torch.set_num_threads(args.torch_threads)
    per_method: dict[str, dict[int, dict]] = {}
    images = None
    for method, seed, run_dir, summary in runs:
        logger.info("measuring %s", run_dir)
        shift = run_shift(run_dir, summary, args)
        bad = [t for t in ("text", "vision") if not all(math.isfinite(v) for v in shift[t])]
        if bad:
            raise ValueError(f"the {'/'.join(bad)} feature shift of {run_dir} is not finite: nothing was written")
        images = shift["images"]
        short = {c: n for c, n in images.items() if n < args.images_per_class}
        if short:
            logger.warning("fewer than %d test images for %s: all of theirs are used", args.images_per_class, short)
        per_method.setdefault(method, {})[seed] = shift
    report = {
        "command": args.command,
        "protocol": args.protocol,
        "dataset": runs[0][3]["dataset"],
        "seeds": list(args.seeds),
        "images_per_class": args.images_per_class,
        "test_images": images,  # what each class gave (fewer where its test split is smaller)
        "definition": "per block: mean over real tokens of ||h(prompted) - h(base)|| / ||h(base)|| "
        "(peft_vlprompt.diagnostics.feature_shift); text: the run's class prompts, vision: CLS + patch tokens",
        "methods": {method: summarise(per_seed) for method, per_seed in per_method.items()},
    }
    for method, entry in report["methods"].items():  # what the runs trained with, as they recorded it
        entry["lr"] = sorted({summary["lr"] for m, _, _, summary in runs if m == method and "lr" in summary})
    from peft_vlprompt._atomic import atomic_write_json

    atomic_write_json(args.json_file, report)
    if not args.no_plot:
        plot(report, args.plot_file)
    for method, numbers in report["methods"].items():
        for tower in ("text", "vision"):
            logger.info("%s %s: %s", method, tower, " ".join(f"{v:.3f}" for v in numbers[tower]["mean"]))
    logger.info("wrote %s%s", args.json_file, "" if args.no_plot else f" and {args.plot_file}")
    return report


if __name__ == "__main__":
    main()
