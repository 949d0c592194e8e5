"""`examples/dpl_search.py`: load CLIP and a few-shot task, search the supernet, export `found.json`.

The arguments come from the command line or from one JSON file (`examples/dpl_search.py args.json`, every key a
field) and go through the shared validation (`peft_vlprompt._validation`: type, range, finite; an unknown key of the
file is named), then the checks of the paths and combinations, all before anything is loaded (`check_args`).

Then train the found lengths with the normal loop:
`accelerate launch examples/train.py --method dpl --config <output_dir>/found.json --dataset ... [--kd_weight w]`.
"""

import json
import logging
import os
import shutil
import sys
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from peft import get_peft_model
from transformers import HfArgumentParser

from .._atomic import atomic_write_text, fsync_dir, fsync_file, make_temp_dir, normal_mode, temp_name
from .._validation import FieldTypeError, check_fields, check_known_keys, check_value
from ..classifier import PromptClassifier
from ..tuners.deep_prompt.config import TEXT_INPUTS
from ..tuners.dpl import DPLSearchConfig
from .export import save_search_result
from .search import DPLSearch, DPLSearchArguments, latest_checkpoint, refuse_legacy_resume

logger = logging.getLogger(__name__)

SUBSAMPLES = ("all", "base")
# ranges of the fields (kept out of the fields' metadata, which HfArgumentParser hands to argparse)
RUN_RULES = {"class_chunk_size": {"min": 1}, "text_candidates": {"item_min": 0, "items": "lengths"},
             "vision_candidates": {"item_min": 0, "items": "lengths"}, "subnet_init_std": {"gt": 0}}  # fmt: skip
RUN_IDENTITY = ("model", "dataset", "shots", "subsample", "template")  # what a resumed search must repeat
SEARCH_RULES = {
    **dict.fromkeys(
        (
            "num_epochs",
            "batch_size",
            "val_batch_size",
            "max_steps",
            "checkpoint_every",
            "checkpoints_total_limit",
            "log_every",
        ),
        {"min": 1},
    ),  # fmt: skip
    **dict.fromkeys(("lr", "alpha_lr", "max_grad_norm"), {"gt": 0}),
    **dict.fromkeys(("momentum", "weight_decay", "warmup_lr", "alpha_weight_decay", "warmup_epochs"), {"min": 0}),
}  # alpha_beta1/2 in [0, 1): DPLSearchArguments checks them


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
        default=None,
        metadata={
            "help": "A checkpoints/checkpoint_<n> folder, or 'latest' (the newest complete one under --output_dir)."
        },
    )
    class_chunk_size: int = field(default=256, metadata={"help": "Classes per text-tower call."})
    # -- engine (as examples/train.py) -----------------------------------------------------------------------------
    mixed_precision: str | None = field(
        default=None,
        metadata={"help": "'no' or 'bf16' (fp16's gradient scaler is not supported by the search); default: the "
                  "`accelerate launch` setting.", "choices": ("no", "bf16")},
    )  # fmt: skip
    with_tracking: bool = field(default=False, metadata={"help": "Log losses, alpha entropy and lengths to trackers."})
    report_to: str = field(
        default="all", metadata={"help": "Tracker(s) for --with_tracking, comma-separated, or 'all' (installed)."}
    )
    tracker_project_name: str = field(default="peft_vlprompt_dpl", metadata={"help": "Trackers' project name."})
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
        check_fields(self, rules=RUN_RULES)
        if self.subsample not in SUBSAMPLES:
            raise ValueError(f"`subsample` must be one of {SUBSAMPLES}, got {self.subsample!r}")
        if self.shots != -1 and self.shots < 1:
            raise ValueError(f"`shots` must be >= 1 or -1 (all images), got {self.shots}")
        if self.mixed_precision not in (None, "no", "bf16"):
            raise ValueError(f"`mixed_precision` must be 'no' or 'bf16' (fp16's gradient scaler is not supported by "
                             f"the search), got {self.mixed_precision!r}")  # fmt: skip
        self.trackers()  # a bad --report_to fails when parsed
        if self.subnet_text_input not in TEXT_INPUTS:
            raise ValueError(f"`subnet_text_input` must be one of {TEXT_INPUTS}, got {self.subnet_text_input!r}")

    def trackers(self) -> list[str]:
        """`report_to` as accelerate's `log_with`."""
        from ..training.cli_names import parse_trackers

        return parse_trackers(self.report_to)

    def search_config(self) -> DPLSearchConfig:
        return DPLSearchConfig(
            text_candidates=self.text_candidates,
            vision_candidates=self.vision_candidates,
            share_prompts=self.share_prompts,
            prompt_init=self.prompt_init,
            mixing=self.mixing,
        )


def parse_args(argv: list[str] | None) -> tuple[DPLRunArguments, DPLSearchArguments]:
    """The two argument dataclasses of the command line (`argv=None`: `sys.argv`), or of a JSON file given alone."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) == 1 and argv[0].endswith(".json"):
        return _from_json_file(Path(argv[0]))
    run_args, search_args = HfArgumentParser((DPLRunArguments, DPLSearchArguments)).parse_args_into_dataclasses(
        args=argv
    )
    check_fields(search_args, rules=SEARCH_RULES)  # finite, in range (argparse checked the types)
    return run_args, search_args


def _from_json_file(path: Path) -> tuple[DPLRunArguments, DPLSearchArguments]:
    where = f"DPL search arguments file {path}"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{where} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{where} is not a readable JSON file: {e}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{where} must hold a JSON object of arguments, got {type(data).__name__}")
    classes = (DPLRunArguments, DPLSearchArguments)
    names = {c: {f.name for f in fields(c)} for c in classes}
    check_known_keys(data, names[DPLRunArguments] | names[DPLSearchArguments], where)
    built = []
    for cls, rules in zip(classes, (RUN_RULES, SEARCH_RULES)):
        hints = typing.get_type_hints(cls)
        values = {k: v for k, v in data.items() if k in names[cls]}
        for key, value in values.items():  # before the dataclass compares a wrong type with a number
            meta = {**rules.get(key, {}), **cls.__dataclass_fields__[key].metadata}
            try:
                check_value(key, value, hints[key], meta)
            except FieldTypeError as e:
                raise FieldTypeError(f"{where}: {e}") from None
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        built.append(cls(**values))
    check_fields(built[1], rules=SEARCH_RULES)
    return built[0], built[1]


def check_args(run_args: DPLRunArguments, search_args: DPLSearchArguments) -> DPLSearchConfig:
    """Every check that needs no data or model: the search space, the paths, the dataset name and the resume/output
    combination, so a mistake fails at once (`examples/dpl_search.py` ends it with status 2). Returns the search
    config."""
    from ..data import get_dataset_spec
    from ..training.inputs import check_model_reference

    search_config = run_args.search_config()
    check_model_reference(run_args.model)
    if run_args.data_dir is not None and not Path(run_args.data_dir).expanduser().is_dir():
        raise ValueError(f"`data_dir` folder {run_args.data_dir} does not exist")
    get_dataset_spec(run_args.dataset)
    if run_args.template is not None and "{}" not in run_args.template:
        raise ValueError(f"`template` must contain '{{}}' for the class name, got {run_args.template!r}")
    resume, out = run_args.resume_from_checkpoint, Path(run_args.output_dir)
    if resume is not None:
        refuse_legacy_resume(resume, out)  # the older, pickled format: named, never loaded
    if resume == "latest" and latest_checkpoint(out) is None:
        raise ValueError(f"`resume_from_checkpoint`='latest' but `output_dir` {out} has no complete checkpoint of "
                         "a search to resume: drop --resume_from_checkpoint to start one")  # fmt: skip
    if resume not in (None, "latest") and not Path(resume).is_dir():
        raise ValueError(f"`resume_from_checkpoint` folder {resume} does not exist")
    if resume is None and latest_checkpoint(out) is not None:
        raise ValueError(f"`output_dir` {out} holds the checkpoints of an earlier search ({latest_checkpoint(out)}): "
                         "pass --resume_from_checkpoint latest to continue it, or another --output_dir")  # fmt: skip
    return search_config


def _save_supernet(model, out: Path) -> None:
    """`out/supernet/`, complete or absent, with the umask's permissions (safetensors writes 0600)."""
    final, staging = out / "supernet", make_temp_dir(out, ".supernet-")
    try:
        model.save_pretrained(staging)
        for path in staging.iterdir():
            normal_mode(path)
            fsync_file(path)
        old = temp_name(out, ".supernet.old-") if final.exists() else None
        if old is not None:
            os.rename(final, old)
        os.rename(staging, final)
        fsync_dir(out)
        if old is not None:
            shutil.rmtree(old)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def main(argv: list[str] | None = None) -> dict:
    """Run the search; returns `{"found": path, "alphas": path, "chosen_lengths": ..., "steps": ...}`."""
    return run_search(*parse_args(argv))


def run_search(run_args: DPLRunArguments, search_args: DPLSearchArguments) -> dict:
    """`main` with parsed arguments (checked again here: `check_args` is cheap and loads nothing)."""
    from accelerate import Accelerator
    from accelerate.utils import ProjectConfiguration

    from ..data import load_task, make_transform
    from ..training.build import load_clip
    from ..training.data import AugmentedViews
    from ..training.trackers import check_trackers, start_trackers

    search_config = check_args(run_args, search_args)  # before anything is loaded
    check_trackers(run_args)
    accelerator = Accelerator(
        mixed_precision=run_args.mixed_precision,
        log_with=run_args.trackers() if run_args.with_tracking else None,
        project_config=ProjectConfiguration(project_dir=run_args.output_dir),
    )
    start_trackers(accelerator, run_args)
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
    clip, tokenizer, image_processor = load_clip(run_args.model)  # after the data, whose errors come first
    # training images take the random crop/flip seeded per (seed, epoch, image), as in the training loop, so a
    # resumed search sees the same views whatever was drawn before; val the test view
    train = AugmentedViews(task.train, make_transform(image_processor, train=True), search_args.seed)
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
    search = DPLSearch(
        model, classifier, train, val, search_args, run_args.output_dir, accelerator=accelerator, keyed_train=True,
        run_info={k: getattr(run_args, k) for k in RUN_IDENTITY},  # a resume with another dataset etc. is refused
    )  # fmt: skip
    if run_args.resume_from_checkpoint:
        search.resume(run_args.resume_from_checkpoint)
    search.run()

    result = {"steps": search.global_step, "epochs_done": search.epoch}
    if accelerator.is_main_process:
        out = Path(run_args.output_dir)
        found, alphas = save_search_result(
            model, out, init_std=run_args.subnet_init_std, text_input=run_args.subnet_text_input
        )
        _save_supernet(model, out)
        summary = json.loads(alphas.read_text())
        result |= {"found": str(found), "alphas": str(alphas), "chosen_lengths": summary["chosen_lengths"]}
        last = search.history[-1] if search.history else {}
        result |= {"final_train_loss": last.get("train_loss"), "final_val_loss": last.get("val_loss")}
        record = {"run": asdict(run_args), "search": asdict(search_args), "result": result}
        atomic_write_text(out / "dpl_search_results.json", json.dumps(record, indent=2) + "\n")
        logger.info("chosen lengths: %s", summary["chosen_lengths"])
        logger.info(
            "next: accelerate launch examples/train.py --method dpl --config %s --dataset %s%s", found, run_args.dataset,
            f" --data_dir {run_args.data_dir}" if run_args.data_dir else "",
        )  # fmt: skip
    accelerator.wait_for_everyone()
    if run_args.with_tracking:
        accelerator.end_training()
    return result
