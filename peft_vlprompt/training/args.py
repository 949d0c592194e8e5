"""Command-line arguments of `examples/train.py` (a dataclass for `transformers.HfArgumentParser`).

Hyperparameters left unset (`None`) come from the method's preset (`presets.py`, the papers' values); a flag given
on the command line always wins. `DEFAULT_RUN` is the one place that defines what a bare `python examples/train.py`
does: ProGrad-CoOp on the toy world's base-to-new task with the shipped toy CLIP. Flags that do not choose another
experiment (`--output_dir`, `--max_train_steps`, `--seed`, ...) change the default run rather than leaving it.
"""

import json
from dataclasses import dataclass, field

from transformers import HfArgumentParser

from .schedule import GRANULARITIES

PROTOCOLS = ("few_shot", "base2new", "cross_dataset", "domain_generalization")
MIXED_PRECISION = ("no", "bf16", "fp16")

# The embedded default run (no command-line arguments): ProGrad-CoOp on the toy world's base-to-new task with the
# shipped toy CLIP, about 1-2 min on 2 CPU cores. The task is `toy_objects_night`, the domain the toy CLIP never saw
# in pretraining (the toy analogue of a specialised dataset such as EuroSAT): zero-shot is weak there while the image
# features still separate the classes (a 16-shot linear probe on them: 60 % vs zero-shot 32 % on the base classes),
# so there is something for prompts to learn. On the `photo` domain a 16-shot probe stays below zero-shot (62 % vs
# 66 %): no prompt can gain there (see examples/toy/results/methods_table.md). ProGrad's preset gives 200 epochs for
# 16 shots (sized for real datasets); 50 fit the budget. The toy images are 32 px: the papers' random crops of down
# to 8% of the area (made for 224 px photos) mostly cut the object out, so the default keeps >= 50%.
DEFAULT_RUN: dict[str, str | int | float] = {
    "method": "prograd",
    "dataset": "toy_objects_night",
    "protocol": "base2new",
    "shots": 16,
    "seed": 1,
    "num_epochs": 50,
    "batch_size": 32,
    "train_crop_scale": "0.5 1.0",
    "output_dir": "runs/toy_prograd_base2new_night",
    "torch_threads": 1,  # the toy CLIP's matrices are tiny: more threads only add synchronisation
}


@dataclass
class TrainArguments:
    """Arguments of one training (or zero-shot evaluation) run. Every field is a `--flag` of `examples/train.py`."""

    # -- what to train ---------------------------------------------------------------------------------------------
    method: str | None = field(
        default=None,
        metadata={
            "help": f"Method preset (default: {DEFAULT_RUN['method']}, or the type of --config): coop, cocoop, prograd, kgcoop, ivlp, vpt, deep_language, maple, promptsrc, "
            "restore, dpl, deep_prompt or zeroshot (evaluation only). Methods whose config class is not installed "
            "are listed in the error. The preset sets the adapter config and epochs/lr/batch size of the paper."
        },
    )
    config: str | None = field(
        default=None,
        metadata={
            "help": "JSON adapter config replacing the preset's adapter (a peft `adapter_config.json`, a folder "
            "holding one, or DPL's exported `found.json`). A JSON object with an `adapter_config` key may also set "
            "training arguments (e.g. `num_epochs`) next to it; command-line flags still win."
        },
    )
    adapter_kwargs: str | None = field(
        default=None,
        metadata={"help": "JSON object of adapter-config fields that override the preset, e.g. '{\"n_ctx\": 8}'."},
    )
    # -- data ------------------------------------------------------------------------------------------------------
    dataset: str = field(
        default=str(DEFAULT_RUN["dataset"]),
        metadata={"help": "Registered dataset name (see `peft_vlprompt.data.DATASET_SPECS`), e.g. oxford_pets."},
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Root folder holding the dataset folders (CoOp's DATASET.ROOT)."}
    )
    template: str | None = field(
        default=None,
        metadata={
            "help": "Hand-crafted prompt for zero-shot CLIP and the methods' teachers: a template table name "
            "(coop, prograd, kgcoop) or a format string with one '{}'. Default: the preset's table, else the "
            "dataset's CoOp template."
        },
    )
    shots: int = field(default=16, metadata={"help": "Training images per class (-1 for all)."})
    seed: int = field(default=1, metadata={"help": "Run seed (few-shot sampling, initialisation, data order)."})
    protocol: str = field(
        default="base2new",
        metadata={"help": f"Evaluation protocol, one of {', '.join(PROTOCOLS)}.", "choices": PROTOCOLS},
    )
    eval_datasets: list[str] | None = field(
        default=None,
        metadata={
            "help": "Target datasets for cross_dataset / domain_generalization (default for imagenet: the 10 "
            "other datasets / the four ImageNet variants)."
        },
    )
    train_crop_scale: list[float] = field(
        default_factory=lambda: [0.08, 1.0],
        metadata={"help": "Area range of the training random resized crop (CoOp and successors: 0.08 1.0)."},
    )
    # -- model -----------------------------------------------------------------------------------------------------
    model: str | None = field(
        default=None,
        metadata={
            "help": "CLIP checkpoint: local folder or Hub id (e.g. openai/clip-vit-base-patch16). Default: the toy "
            "CLIP shipped in peft_vlprompt/toy/toy_clip."
        },
    )
    # -- optimisation ----------------------------------------------------------------------------------------------
    num_epochs: int | None = field(default=None, metadata={"help": "Training epochs (default: preset)."})
    lr: float | None = field(default=None, metadata={"help": "Peak SGD learning rate (default: preset)."})
    batch_size: int | None = field(
        default=None, metadata={"help": "Training batch size per device (default: preset, the papers' batch)."}
    )
    eval_batch_size: int = field(default=100, metadata={"help": "Evaluation batch size per device."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum (Dassl default)."})
    weight_decay: float = field(default=5e-4, metadata={"help": "SGD weight decay (Dassl default)."})
    warmup_epochs: int = field(default=1, metadata={"help": "Constant warm-up epochs before the cosine (Dassl: 1)."})
    warmup_lr: float = field(default=1e-5, metadata={"help": "Learning rate of the warm-up epochs (Dassl: 1e-5)."})
    lr_granularity: str = field(
        default="epoch",
        metadata={
            "help": "'epoch': the cosine is stepped once per epoch as in Dassl; 'step': same curve, per iteration.",
            "choices": GRANULARITIES,
        },
    )
    max_grad_norm: float | None = field(
        default=None, metadata={"help": "Clip the gradient norm to this value (papers: no clipping)."}
    )
    max_train_steps: int | None = field(
        default=None,
        metadata={
            "help": "Stop after this many optimizer steps (quick runs, or ending a run at a checkpoint). The "
            "learning-rate schedule still spans --num_epochs, so resuming the stopped run gives the full run."
        },
    )
    mixed_precision: str | None = field(
        default=None,
        metadata={
            "help": "no / bf16 / fp16 (fp16 needs a GPU); default: the `accelerate launch` configuration.",
            "choices": MIXED_PRECISION,
        },
    )
    torch_threads: int | None = field(
        default=None,
        metadata={
            "help": "torch intra-op CPU threads (default: torch's choice). Tiny models such as the toy CLIP run "
            "fastest with 1, and a busy machine can make more threads much slower."
        },
    )
    cpu: bool = field(
        default=False,
        metadata={
            "help": "Run on CPU even when a GPU is present. A multi-process launch on a machine without a GPU "
            "(e.g. `accelerate launch --multi_gpu --num_processes 2`) uses CPU + gloo automatically."
        },
    )
    # -- method-specific -------------------------------------------------------------------------------------------
    kd_weight: float | None = field(
        default=None,
        metadata={
            "help": "Weight of the distillation term to zero-shot CLIP for methods that support one (dpl, "
            "deep_prompt); default 0 (DPL's released training multiplies it by 0)."
        },
    )
    kd_temperature: float = field(default=1.0, metadata={"help": "Temperature of that distillation term."})
    # -- doing less work -------------------------------------------------------------------------------------------
    cache_image_features: bool = field(
        default=False,
        metadata={
            "help": "Encode --num_views augmented views of every training image once with the frozen image tower "
            "and train on the cached features (only for methods that do not prompt the image tower). Epoch e uses "
            "view e mod num_views; with num_views >= num_epochs the numbers equal the uncached run."
        },
    )
    num_views: int = field(default=4, metadata={"help": "Augmented views per image cached by --cache_image_features."})
    class_chunk_size: int = field(default=256, metadata={"help": "Classes per text-encoder call (memory bound)."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    eval_zero_shot: bool = field(
        default=True, metadata={"help": "Also evaluate zero-shot CLIP (adapters disabled) on every test split."}
    )
    # -- output, checkpoints ---------------------------------------------------------------------------------------
    output_dir: str | None = field(
        default=None,
        metadata={"help": "Where the adapter, checkpoints and all_results.json go (default: runs/<method>_...)."},
    )
    checkpointing_steps: str | None = field(
        default=None,
        metadata={"help": "Save a resumable checkpoint every N optimizer steps (an integer) or every 'epoch'."},
    )
    checkpoints_total_limit: int | None = field(
        default=None, metadata={"help": "Keep only the newest N checkpoints (older ones are deleted)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={"help": "Checkpoint folder to resume from, or 'latest' for the newest in <output_dir>/checkpoints."},
    )
    # -- tracking, Hub ---------------------------------------------------------------------------------------------
    with_tracking: bool = field(default=False, metadata={"help": "Log metrics to the installed trackers."})
    report_to: str = field(
        default="all", metadata={"help": "Tracker(s) for --with_tracking: 'all', or e.g. 'tensorboard', 'wandb'."}
    )
    logging_steps: int = field(default=10, metadata={"help": "Log the loss terms every N optimizer steps."})
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the trained adapter and its model card."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository for --push_to_hub (user/name)."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"`protocol` must be one of {PROTOCOLS}, got {self.protocol!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(f"`mixed_precision` must be one of {MIXED_PRECISION}, got {self.mixed_precision!r}")
        if self.lr_granularity not in GRANULARITIES:
            raise ValueError(f"`lr_granularity` must be one of {GRANULARITIES}, got {self.lr_granularity!r}")
        if self.shots != -1 and self.shots < 1:
            raise ValueError(f"`shots` must be >= 1 or -1 (all images), got {self.shots}")
        for name in ("num_epochs", "batch_size", "max_train_steps", "checkpoints_total_limit"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"`{name}` must be >= 1, got {value}")
        for name in ("eval_batch_size", "gradient_accumulation_steps", "num_views", "class_chunk_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        scale = self.train_crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`train_crop_scale` must be two numbers 0 < min <= max <= 1, got {scale}")
        if self.logging_steps < 1:
            raise ValueError(f"`logging_steps` must be >= 1, got {self.logging_steps}")
        if self.torch_threads is not None and self.torch_threads < 1:
            raise ValueError(f"`torch_threads` must be >= 1, got {self.torch_threads}")
        if self.dataloader_num_workers < 0:
            raise ValueError(f"`dataloader_num_workers` must be >= 0, got {self.dataloader_num_workers}")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"`lr` must be > 0, got {self.lr}")
        if self.warmup_epochs < 0:
            raise ValueError(f"`warmup_epochs` must be >= 0, got {self.warmup_epochs}")
        if self.kd_weight is not None and self.kd_weight < 0:
            raise ValueError(f"`kd_weight` must be >= 0, got {self.kd_weight}")
        if self.kd_temperature <= 0:
            raise ValueError(f"`kd_temperature` must be > 0, got {self.kd_temperature}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"`max_grad_norm` must be > 0, got {self.max_grad_norm}")
        if self.checkpointing_steps is not None and self.checkpointing_steps != "epoch":
            if not str(self.checkpointing_steps).isdigit() or int(self.checkpointing_steps) < 1:
                raise ValueError(
                    f"`checkpointing_steps` must be a positive integer or 'epoch', got {self.checkpointing_steps!r}"
                )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("`hub_model_id` is required with `push_to_hub` (e.g. --hub_model_id user/coop-dtd)")
        if self.adapter_kwargs is not None:
            try:
                parsed = json.loads(self.adapter_kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"`adapter_kwargs` must be a JSON object, got {self.adapter_kwargs!r} ({e})") from e
            if not isinstance(parsed, dict):
                raise ValueError(f"`adapter_kwargs` must be a JSON object, got {self.adapter_kwargs!r}")

    def default_output_dir(self) -> str:
        shots = "all" if self.shots == -1 else self.shots
        return f"runs/{self.method}_{self.dataset}_{self.protocol}_{shots}shots_seed{self.seed}"

    @property
    def checkpoint_every(self) -> int | str | None:
        """`checkpointing_steps` parsed: an int, 'epoch' or None."""
        if self.checkpointing_steps is None or self.checkpointing_steps == "epoch":
            return self.checkpointing_steps
        return int(self.checkpointing_steps)

    def adapter_overrides(self) -> dict:
        return {} if self.adapter_kwargs is None else json.loads(self.adapter_kwargs)


def default_argv() -> list[str]:
    """`DEFAULT_RUN` as command-line flags."""
    argv = []
    for key, value in DEFAULT_RUN.items():
        argv += [f"--{key}", *str(value).split()]
    return argv


# Flags that choose an experiment of their own; with any of them the method preset, not `DEFAULT_RUN`, sets the rest.
EXPERIMENT_FLAGS = frozenset({"method", "dataset", "config"})


def _chooses_experiment(argv: list[str]) -> bool:
    given = {a[2:].split("=", 1)[0].replace("-", "_") for a in argv if a.startswith("--")}
    return not given.isdisjoint(EXPERIMENT_FLAGS)


def parse_args(argv: list[str] | None) -> TrainArguments:
    """Parse `argv`; unknown flags are an error.

    Without `--method`, `--dataset` or `--config` the run is the embedded `DEFAULT_RUN`, with the given flags
    overriding its entries (`--output_dir x --seed 2` is the default run with another folder and seed).
    """
    argv = list(argv or [])
    if not _chooses_experiment(argv):
        argv = default_argv() + argv  # argparse keeps the last value of a repeated flag
    (args,) = HfArgumentParser(TrainArguments).parse_args_into_dataclasses(args=argv)
    return args
