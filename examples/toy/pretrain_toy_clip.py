"""Pretrain the toy CLIP (or the toy SigLIP) on the toy world and/or measure its zero-shot accuracy.

Regenerate the shipped models (bit-for-bit on the same torch version and CPU; times in README):

    python examples/toy/pretrain_toy_clip.py --output_dir peft_vlprompt/toy/toy_clip --eval
    python examples/toy/pretrain_toy_clip.py --family siglip --head_dim 16 --text_layers 6 --vision_layers 6 \
        --batch_size 64 --distinct_classes false --learning_rate 1e-3 --temperature_lr_multiplier 10 \
        --partial_caption_prob 0.1 --wrong_caption_prob 0.02 --projection_dim 64 \
        --output_dir peft_vlprompt/toy/toy_siglip --eval

(the toy SigLIP was pretrained before the toy CLIP's current settings; its flags restore the settings it used, also
recorded in its folder's `toy_pretrain_config.json`)

Zero-shot table of a shipped model (tasks x domains, test split seed 0, 20 images per class and domain):

    python examples/toy/pretrain_toy_clip.py --eval_only [--model_path peft_vlprompt/toy/toy_siglip]

Every field of `peft_vlprompt.toy.pretrain.ToyPretrainConfig` is a flag (`--steps`, `--difficulty`, ...).
"""

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from accelerate import PartialState
from accelerate.logging import get_logger
from transformers import AutoModel, AutoProcessor, HfArgumentParser

from peft_vlprompt.toy import OBJECT_CLASSES, get_task, list_domains, list_tasks, toy_clip_path, toy_splits
from peft_vlprompt.toy.pretrain import ToyPretrainConfig, pretrain_toy_clip, save_toy_clip
from peft_vlprompt.toy.zeroshot import zero_shot_accuracy

logger = get_logger(__name__)


@dataclass
class ScriptArguments:
    output_dir: str | None = field(default=None, metadata={"help": "Where to write the model (pretraining)."})
    eval: bool = field(default=False, metadata={"help": "Measure zero-shot accuracy after pretraining."})
    eval_only: bool = field(default=False, metadata={"help": "Skip pretraining; evaluate --model_path."})
    model_path: str | None = field(default=None, metadata={"help": "Model to evaluate (default: shipped)."})
    eval_tasks: list[str] = field(default_factory=list_tasks, metadata={"help": "Tasks to evaluate."})
    eval_domains: list[str] = field(default_factory=list_domains, metadata={"help": "Domains to evaluate."})
    n_test_per_class: int = field(default=20, metadata={"help": "Test images per class and domain."})
    eval_seed: int = field(default=0, metadata={"help": "Seed of the test splits."})
    results_file: str | None = field(default=None, metadata={"help": "Write the zero-shot table as JSON here."})
    probe: bool = field(
        default=False, metadata={"help": "Every --log_every steps, log zero-shot accuracy on objects/photo (5/class)."}
    )


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def evaluate(model_path: str, args: ScriptArguments) -> dict[str, dict[str, float]]:
    model = AutoModel.from_pretrained(model_path).eval()
    processor = AutoProcessor.from_pretrained(model_path)
    table: dict[str, dict[str, float]] = {}
    for task in args.eval_tasks:
        template = get_task(task).template
        for domain in args.eval_domains:
            test = toy_splits(task, domain, 0, 0, args.n_test_per_class, seed=args.eval_seed)["test"]
            acc = zero_shot_accuracy(model, processor, test, template=template)
            table.setdefault(task, {})[domain] = round(acc, 2)
            logger.info(
                f"zero-shot {task:8s} {domain:9s} '{template}': {acc:.2f}% (chance {100 / len(get_task(task).classnames):.1f}%)"
            )
    header = "| task | " + " | ".join(args.eval_domains) + " |"
    rows = [f"| {t} | " + " | ".join(f"{table[t][d]:.2f}" for d in args.eval_domains) + " |" for t in table]
    logger.info("\n" + "\n".join([header, "|" + "---|" * (len(args.eval_domains) + 1), *rows]))
    return table


def make_probe(cfg: ToyPretrainConfig):
    """Zero-shot accuracy on a small fixed objects/photo split during pretraining (for tuning the world)."""
    import numpy as np
    import torch

    from peft_vlprompt.toy.families import FAMILIES
    from peft_vlprompt.toy.pretrain import normalize_images

    family = FAMILIES[cfg.family]
    test = toy_splits("objects", "photo", 0, 0, 5, seed=0)["test"]
    pixels = normalize_images(np.stack([np.asarray(im) for im in test["image"]]), family.image_mean, family.image_std)
    labels = torch.tensor(test["label"])
    tok = family.tokenizer()
    text = family.text_inputs([tok(f"a photo of a {c}.")["input_ids"] for c in test.features["label"].names])

    def probe(step, model):
        with torch.no_grad():
            t = model.get_text_features(**text)
            v = model.get_image_features(pixel_values=pixels)
        t, v = getattr(t, "pooler_output", t), getattr(v, "pooler_output", v)
        pred = (v @ t.T).argmax(-1)
        acc = 100.0 * pred.eq(labels).float().mean().item()
        # which half of the name was right: the shape and colour of the predicted object class
        shape_ok = 100.0 * np.mean([OBJECT_CLASSES[p][0] == OBJECT_CLASSES[y][0] for p, y in zip(pred, labels)])
        color_ok = 100.0 * np.mean([OBJECT_CLASSES[p][1] == OBJECT_CLASSES[y][1] for p, y in zip(pred, labels)])
        logger.info(
            f"probe step {step}: objects/photo zero-shot {acc:.1f}% (shape {shape_ok:.1f}%, colour {color_ok:.1f}%)"
        )

    return probe


def main(argv: list[str] | None = None) -> dict:
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    PartialState()
    parser = HfArgumentParser((ToyPretrainConfig, ScriptArguments))
    cfg, args = parser.parse_args_into_dataclasses(args=argv)
    result: dict = {}
    model_path = args.model_path or toy_clip_path()
    if not args.eval_only:
        if args.output_dir is None:
            parser.error("--output_dir is required unless --eval_only")
        start = time.perf_counter()
        model = pretrain_toy_clip(cfg, callback=make_probe(cfg) if args.probe else None)
        result["pretrain_seconds"] = round(time.perf_counter() - start, 1)
        save_toy_clip(model, args.output_dir, cfg)
        result["sha256"] = sha256(os.path.join(args.output_dir, "model.safetensors"))
        logger.info(f"pretrained in {result['pretrain_seconds']}s; model.safetensors sha256 {result['sha256']}")
        model_path = args.output_dir
    if args.eval or args.eval_only:
        result["zero_shot"] = evaluate(model_path, args)
    if args.results_file:
        tmp = args.results_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        os.replace(tmp, args.results_file)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
