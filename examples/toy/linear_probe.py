"""How much a few-shot classifier on the frozen toy-CLIP image features can beat zero-shot: the headroom of a task.

    python examples/toy/linear_probe.py                       # toy_objects and toy_objects_night, base classes
    python examples/toy/linear_probe.py --datasets toy_shapes --subsample all

For each dataset: zero-shot accuracy with the dataset's template, and a linear probe (one weight vector per class,
initialised from the zero-shot text features, cross-entropy on the few-shot train images at CLIP's own logit scale,
full-batch Adam) evaluated on the same test split as `examples/train.py`. A prompt that only moves the class text
features cannot do better than such a classifier on the same shots; if the probe does not beat zero-shot, the task
leaves prompts nothing to learn from its shots.
"""

import logging
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from accelerate import PartialState
from accelerate.logging import get_logger
from transformers import HfArgumentParser

from peft_vlprompt import PromptClassifier
from peft_vlprompt.data import load_task
from peft_vlprompt.toy import load_toy_clip

logger = get_logger(__name__)


@dataclass
class ProbeArguments:
    datasets: list[str] = field(
        default_factory=lambda: ["toy_objects", "toy_objects_night"], metadata={"help": "Registered datasets."}
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


def main() -> None:
    (args,) = HfArgumentParser(ProbeArguments).parse_args_into_dataclasses()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    PartialState()  # Accelerate's logger needs the state
    torch.manual_seed(args.seed)
    model, processor = load_toy_clip()
    for dataset in args.datasets:
        r = probe(model, processor, dataset, args)
        logger.info(
            "%s (%s classes, %d shots, seed %d): zero-shot %.2f%% | %d-shot linear probe %.2f%% (train %.2f%%)",
            dataset, args.subsample, args.shots, args.seed, r["zero_shot"], args.shots, r["probe_test"],
            r["probe_train"],
        )  # fmt: skip


if __name__ == "__main__":
    main()
