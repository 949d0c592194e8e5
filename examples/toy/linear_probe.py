"""How much a few-shot classifier on the frozen toy-CLIP image features can beat zero-shot: the headroom of a task.

    python examples/toy/linear_probe.py                   # base classes of toy_objects on every domain
    python examples/toy/linear_probe.py --model path/to/other_clip --output examples/toy/results/linear_probe
    python examples/toy/linear_probe.py --domains night --datasets toy_shapes --subsample all

For each domain of `toy_objects` (`--domains`) and each extra registered dataset (`--datasets`): zero-shot accuracy
with the dataset's template, and a linear probe (one weight vector per class, initialised from the zero-shot text
features, cross-entropy on the few-shot train images at CLIP's own logit scale, full-batch Adam) evaluated on the same
test split as `examples/train.py`. A prompt that only moves the class text features cannot do better than such a
classifier on the same shots; if the probe does not beat zero-shot, the task leaves prompts nothing to learn from its
shots (for real CLIP ViT-B/16 a 16-shot probe is well above zero-shot). The table (domain | zero-shot | probe |
probe - zero-shot) is logged and, with `--output`, written as `<output>.md` and `<output>.json`.
"""

import logging
import math
import sys
import types
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.logging import get_logger
from transformers import HfArgumentParser

from peft_vlprompt import PromptClassifier
from peft_vlprompt._atomic import atomic_write_json, atomic_write_text
from peft_vlprompt.data import get_dataset_spec, load_task
from peft_vlprompt.toy import list_domains
from peft_vlprompt.toy.registry import toy_dataset_name
from peft_vlprompt.training.build import load_clip

logger = get_logger(__name__)


@dataclass
class ProbeArguments:
    domains: list[str] = field(
        default_factory=list_domains, metadata={"help": "Domains of `toy_objects` to probe (default: all)."}
    )
    datasets: list[str] = field(default_factory=list, metadata={"help": "Other registered datasets to probe too."})
    model: str | None = field(
        default=None, metadata={"help": "Model folder or Hub id (default: the shipped toy CLIP)."}
    )
    output: str | None = field(
        default=None, metadata={"help": "Write `<output>.md` and `<output>.json` (a .md/.json suffix is dropped)."}
    )
    shots: int = field(default=16, metadata={"help": "Training images per class."})
    seed: int = field(default=1, metadata={"help": "Few-shot sampling seed."})
    subsample: str = field(default="base", metadata={"help": "'all', 'base' or 'new' classes."})
    steps: int = field(default=500, metadata={"help": "Full-batch Adam steps."})
    lr: float = field(default=1e-2, metadata={"help": "Adam learning rate."})
    weight_decay: float = field(default=1e-3, metadata={"help": "L2 penalty on the class weights."})


def probe(model, processor, dataset: str, args: ProbeArguments) -> dict:
    task = load_task(dataset, None, shots=args.shots, seed=args.seed, subsample=args.subsample)
    clf = PromptClassifier(model, processor.tokenizer, task.classnames, template=task.template).eval()

    def features(split) -> torch.Tensor:
        pixels = processor.image_processor(images=list(split["image"]), return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            return clf.image_features(pixels)

    x_train, x_test = features(task.train), features(task.test)
    y_train, y_test = torch.tensor(task.train["label"]), torch.tensor(task.test["label"])
    text = clf.zero_shot_text_features()
    scale = clf.logit_scale().item()
    weights = text.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weights], lr=args.lr)
    for _ in range(args.steps):
        loss = F.cross_entropy(scale * x_train @ weights.T, y_train) + args.weight_decay * weights.pow(2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    def accuracy(x, y, w):
        return 100.0 * (x @ w.T).argmax(-1).eq(y).float().mean().item()

    with torch.no_grad():
        return {
            "zero_shot": accuracy(x_test, y_test, text),
            "probe_train": accuracy(x_train, y_train, weights),
            "probe_test": accuracy(x_test, y_test, weights),
        }


def rows_to_probe(args: ProbeArguments) -> list[tuple[str, str]]:
    """`(row label, dataset)` for every domain and extra dataset; unknown names are refused before any work."""
    unknown = [d for d in args.domains if d not in list_domains()]
    if unknown:
        raise ValueError(f"`domains` {unknown} are not toy domains; choose from {list_domains()}")
    if not args.domains and not args.datasets:
        raise ValueError("nothing to probe: give `--domains` and/or `--datasets`")
    for name in args.datasets:
        get_dataset_spec(name)  # raises, naming the registered datasets
    return [(d, toy_dataset_name("objects", d)) for d in args.domains] + [(n, n) for n in args.datasets]


def markdown(results: list[dict], args: ProbeArguments, command: str) -> str:
    model = f"`{args.model}`" if args.model else "the shipped toy CLIP (`peft_vlprompt/toy/toy_clip`)"
    lines = [
        f"Zero-shot vs a {args.shots}-shot linear probe on the frozen image features ({args.subsample} classes, "
        f"few-shot seed {args.seed}, {args.steps} Adam steps at lr {args.lr}, L2 {args.weight_decay}; accuracy in %), "
        f"on {model}. Produced by `{command}`.",
        "",
        "| domain | zero-shot | probe | probe - zero-shot |",
        "|---|---|---|---|",
    ]
    for r in results:
        gain = r["probe_test"] - r["zero_shot"]
        lines.append(f"| {r['domain']} | {r['zero_shot']:.1f} | {r['probe_test']:.1f} | {gain:+.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> list[dict]:
    (args,) = HfArgumentParser(ProbeArguments).parse_args_into_dataclasses(args=argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    PartialState()  # Accelerate's logger needs the state
    command = "python examples/toy/linear_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    rows = rows_to_probe(args)
    torch.manual_seed(args.seed)
    model, tokenizer, image_processor = load_clip(args.model)
    processor = types.SimpleNamespace(tokenizer=tokenizer, image_processor=image_processor)
    results = []
    for label, dataset in rows:
        r = probe(model.eval(), processor, dataset, args)
        if not all(math.isfinite(v) for v in r.values()):
            raise ValueError(f"non-finite accuracy on {dataset}: {r}")
        results.append({"domain": label, "dataset": dataset, **r})
        logger.info(
            "%s (%s classes, %d shots, seed %d): zero-shot %.2f%% | %d-shot linear probe %.2f%% (train %.2f%%)",
            dataset, args.subsample, args.shots, args.seed, r["zero_shot"], args.shots, r["probe_test"],
            r["probe_train"],
        )  # fmt: skip
    table = markdown(results, args, command)
    logger.info("\n%s", table)
    if args.output:
        stem = Path(args.output)
        stem = stem.with_suffix("") if stem.suffix in (".md", ".json") else stem
        atomic_write_text(stem.with_suffix(".md"), table)
        atomic_write_json(
            stem.with_suffix(".json"), {"command": command, "arguments": asdict(args), "results": results}
        )
        logger.info("wrote %s and %s", stem.with_suffix(".md"), stem.with_suffix(".json"))
    return results


if __name__ == "__main__":
    main()
