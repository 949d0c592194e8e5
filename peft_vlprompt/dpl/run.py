"""`examples/dpl_search.py`: load CLIP and a few-shot task, search the supernet, export `found.json`.

Then train the found lengths with the normal loop:
`accelerate launch examples/train.py --method dpl --config <output_dir>/found.json --dataset ... [--kd_weight w]`.
"""

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import HfArgumentParser

from ..classifier import PromptClassifier
from ..tuners.deep_prompt.config import TEXT_INPUTS
from ..tuners.dpl import DPLSearchConfig
from .export import save_search_result
from .search import DPLSearch, DPLSearchArguments

logger = logging.getLogger(__name__)

SUBSAMPLES = ("all", "base")


@dataclass
class DPLRunArguments:
    """What to search on, the search space, and where to write. Every field is a `--flag` of the script."""

    model: str | None = field(
        default=None, metadata={"help": "CLIP folder or Hub id (default: the toy CLIP shipped with the package)."}
    )
    dataset: str = field(default="toy_objects", metadata={"help": "Registered dataset name (needs a val split)."})
    data_dir: str | None = field(default=None, metadata={"help": "Root folder holding the dataset folders."})
    shots: int = field(default=16, metadata={"help": "Training images per class (val: min(shots, 4)); -1: all."})
    subsample: str = field(
        default="all", metadata={"help": "'all' classes (few-shot) or 'base' (base-to-new).", "choices": SUBSAMPLES}
    )
    template: str | None = field(default=None, metadata={"help": "Prompt template (default: the dataset's)."})
    output_dir: str = field(default="runs/dpl_search", metadata={"help": "Checkpoints, found.json, alphas.json."})
    resume_from_checkpoint: str | None = field(
        default=None, metadata={"help": "A checkpoint-<step> folder, or 'latest' under --output_dir."}
    )
    class_chunk_size: int = field(default=256, metadata={"help": "Classes per text-tower call."})
    # -- search space (DPLSearchConfig) ---------------------------------------------------------------------------
    text_candidates: list[int] = field(
        default_factory=lambda: list(range(7)), metadata={"help": "Text prompt lengths searched per layer."}
    )
    vision_candidates: list[int] = field(
        default_factory=lambda: list(range(7)), metadata={"help": "Vision prompt lengths searched per layer."}
    )
    share_prompts: bool = field(default=False, metadata={"help": "Candidates share one prompt bank per layer."})
    prompt_init: str = field(default="released", metadata={"help": "'released' or 'normal' prompt init."})
    mixing: str = field(default="efficient", metadata={"help": "'efficient' or 'naive' candidate mixing."})
    # -- the found configuration ----------------------------------------------------------------------------------
    subnet_init_std: float = field(default=0.02, metadata={"help": "init_std of the found config's fresh prompts."})
    subnet_text_input: str = field(
        default="ensemble",
        metadata={
            "help": "Text input of the training stage written into found.json: 'ensemble' (released DPL, CTX_INIT "
            "'ensemble': token embeddings averaged over the 60 ImageNet templates) or 'template' (the dataset's "
            "template only).",
            "choices": TEXT_INPUTS,
        },
    )

    def __post_init__(self):
        if self.subsample not in SUBSAMPLES:
            raise ValueError(f"`subsample` must be one of {SUBSAMPLES}, got {self.subsample!r}")
        if self.shots != -1 and self.shots < 1:
            raise ValueError(f"`shots` must be >= 1 or -1 (all images), got {self.shots}")
        if self.subnet_text_input not in TEXT_INPUTS:
            raise ValueError(f"`subnet_text_input` must be one of {TEXT_INPUTS}, got {self.subnet_text_input!r}")

    def search_config(self) -> DPLSearchConfig:
        return DPLSearchConfig(
            text_candidates=self.text_candidates,
            vision_candidates=self.vision_candidates,
            share_prompts=self.share_prompts,
            prompt_init=self.prompt_init,
            mixing=self.mixing,
        )


def parse_args(argv: list[str] | None) -> tuple[DPLRunArguments, DPLSearchArguments]:
    parser = HfArgumentParser((DPLRunArguments, DPLSearchArguments))
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> dict:
    """Run the search; returns `{"found": path, "alphas": path, "chosen_lengths": ..., "steps": ...}`."""
    from accelerate import Accelerator

    from ..data import load_task, make_transform
    from ..training.build import load_clip

    run_args, search_args = parse_args(argv)
    accelerator = Accelerator()
    search_config = run_args.search_config()  # fail on a bad search space before loading anything
    clip, tokenizer, image_processor = load_clip(run_args.model)
    task = load_task(
        run_args.dataset,
        run_args.data_dir,
        shots=None if run_args.shots == -1 else run_args.shots,
        seed=search_args.seed,
        subsample=run_args.subsample,
        template=run_args.template,
    )
    if task.train is None or task.val is None or len(task.val) == 0:
        raise ValueError(
            f"DPL's search needs validation data (alpha is learned on it): dataset {task.name!r} has "
            f"{'no' if task.val is None else 'an empty'} val split; use a dataset with a val split"
        )
    # training images take the random crop/flip (from the global torch RNG, saved in checkpoints); val the test view
    train = task.train.with_transform(make_transform(image_processor, train=True))
    val = task.val.with_transform(make_transform(image_processor, train=False))

    torch.manual_seed(search_args.seed)  # the supernet's alpha and prompt initialisation
    model = get_peft_model(clip, search_config).to(accelerator.device)
    classifier = PromptClassifier(
        model, tokenizer, task.classnames, task.template, class_chunk_size=run_args.class_chunk_size
    )
    logger.info(
        "DPL search on %s: %d train / %d val images, %d classes; text candidates %s, vision candidates %s",
        task.name, len(train), len(val), task.num_classes, search_config.text_candidates,
        search_config.vision_candidates,
    )  # fmt: skip
    search = DPLSearch(model, classifier, train, val, search_args, run_args.output_dir, accelerator=accelerator)
    if run_args.resume_from_checkpoint:
        search.resume(run_args.resume_from_checkpoint)
    search.run()

    result = {"steps": search.global_step, "epochs_done": search.epoch}
    if accelerator.is_main_process:
        out = Path(run_args.output_dir)
        found, alphas = save_search_result(
            model, out, init_std=run_args.subnet_init_std, text_input=run_args.subnet_text_input
        )
        model.save_pretrained(out / "supernet")
        summary = json.loads(alphas.read_text())
        result |= {"found": str(found), "alphas": str(alphas), "chosen_lengths": summary["chosen_lengths"]}
        last = search.history[-1] if search.history else {}
        result |= {"final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss")}
        record = {"run": asdict(run_args), "search": asdict(search_args), "result": result}
        tmp = out / ".dpl_search_results.json.tmp"
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out / "dpl_search_results.json")
        logger.info("chosen lengths: %s", summary["chosen_lengths"])
        logger.info(
            "next: accelerate launch examples/train.py --method dpl --config %s --dataset %s%s", found, run_args.dataset,
            f" --data_dir {run_args.data_dir}" if run_args.data_dir else "",
        )  # fmt: skip
    accelerator.wait_for_everyone()
    return result
