"""Command-line arguments of `examples/train.py`, their one validation and their one precedence.

Every value, whatever its source, goes through the same checks (`TrainArguments.__post_init__`: the field's type and
range from its annotation and metadata, then the rules spanning fields). Precedence, highest first:

    command line  >  `--config` file  >  method preset (num_epochs / lr / batch_size / adapter)  >  default

`DEFAULT_RUN` is what a bare `python examples/train.py` does: ProGrad-CoOp on the toy world's base-to-new task with
the shipped toy CLIP. It applies while no flag chooses another experiment (`--method`/`--dataset` with another value
than the default run's, or `--config`); its entries then stand in for command-line values, and the flags given
override them. Standard library only (no torch): the example parses and validates before the heavy imports.
"""

import json
from dataclasses import MISSING, dataclass, field, fields

from .._validation import check_fields, parse_checkpointing_steps
from .cli_names import check_data_source, parse_trackers
from .schedule import GRANULARITIES

PROTOCOLS = ("few_shot", "base2new", "cross_dataset", "domain_generalization")
MIXED_PRECISION = ("no", "bf16", "fp16")
DTYPES = ("float32", "bfloat16", "float16")  # peft_vlprompt.precision.FROZEN_DTYPES (kept free of torch here)
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
SELECT_ON = ("last", "validation")
COMMAND_LINE, CONFIG_FILE, DEFAULT_RUN_SOURCE, PRESET = "command line", "config file", "default run", "preset"

# The embedded default run (no command-line arguments): ProGrad-CoOp on the toy world's base-to-new task with the
# shipped toy CLIP, about 20 s on 2 CPU cores. The task is `toy_objects_night`, the domain the toy CLIP never saw
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
# Flags that choose an experiment of their own (when their value differs from the default run's)
EXPERIMENT_FLAGS = ("method", "dataset", "config", "dataset_name", "train_dir")


def _f(default=None, help: str = "", shown: str | None = None, **rules):
    """A field with its help, the default shown in `--help` (`shown`, else the value) and validation `rules`."""
    meta = {"help": help, **rules}
    if shown is not None:
        meta["shown"] = shown
    if callable(default) and not isinstance(default, str):
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainArguments:
    """Arguments of one training (or zero-shot evaluation) run. Every field is a `--flag` of `examples/train.py`."""

    # -- what to train ---------------------------------------------------------------------------------------------
    method: str | None = _f(
        None,
        "Method: coop, cocoop, prograd, kgcoop, ivlp, vpt, deep_language, maple, promptsrc, "
        "restore, dpl, deep_prompt, clip_lora (LoRA on q/k/v of both towers, AdamW, 500 x shots iterations), "
        "linear_probe / linear_probe_text (logistic regression on frozen image features, plain or from zero-shot "
        "CLIP's text weights; L2 chosen on validation; training classes only) or zeroshot (evaluation only). Its "
        "preset sets the adapter and the epochs/lr/batch size of the paper.",
        shown="the type of --config, else prograd",
    )
    config: str | None = _f(
        None,
        "JSON adapter config replacing the preset's adapter (a peft `adapter_config.json`, a "
        "folder holding one, or DPL's exported `found.json`). A JSON object with an "
        "`adapter_config` key may also set training arguments next to it; an object of training arguments only "
        "sets those (`examples/train.py args.json` reads such a file as --config). Command-line flags win.",
    )
    adapter_kwargs: str | None = _f(
        None,
        "JSON object of adapter-config fields that override the preset's or the "
        "--config file's, e.g. '{\"n_ctx\": 8}'.",
    )
    # -- data ------------------------------------------------------------------------------------------------------
    dataset: str = _f(
        str(DEFAULT_RUN["dataset"]),
        "Registered dataset name (see `peft_vlprompt.data.DATASET_SPECS`), e.g. oxford_pets.",
    )
    data_dir: str | None = _f(
        None, "Root folder holding the dataset folders (CoOp's DATASET.ROOT).", shown="none (toy datasets need none)"
    )
    # any `datasets` source instead of a registered dataset (as transformers' run_image_classification_no_trainer.py)
    dataset_name: str | None = _f(
        None,
        "A `datasets` dataset instead of a registered one: a Hub id (load_dataset), a folder saved with "
        "`save_to_disk`, or an imagefolder folder (train/, test/ or validation/, one sub-folder per class). The "
        "protocols (few-shot sampling, base-to-new) apply as to the registered datasets; --dataset may name it in "
        "the results. Evaluates on its 'test' split, else on 'validation'.",
        shown="a registered --dataset",
    )
    dataset_config_name: str | None = _f(
        None, "Configuration of the Hub dataset --dataset_name (its load_dataset name)."
    )
    train_dir: str | None = _f(
        None,
        "An imagefolder of training images (one sub-folder per class), instead of --dataset/--dataset_name.",
        shown="a registered --dataset",
    )
    validation_dir: str | None = _f(
        None, "The imagefolder the --train_dir run evaluates on (one sub-folder per class, same class names)."
    )
    image_column: str = _f("image", "Image column of --dataset_name (images or file paths).")
    label_column: str = _f(
        "label", "Label column of --dataset_name: a ClassLabel, or integers named by --class_names_file."
    )
    class_names_file: str | None = _f(
        None,
        "Class names of a --dataset_name/--train_dir dataset in label order: a text file with one name per line, or "
        "a JSON list. Required when the label column is no ClassLabel; with one, it gives the order of its names.",
        shown="the label column's ClassLabel names",
    )
    streaming: bool = _f(
        False,
        "Not supported (refused): few-shot sampling and the base/new split read every label of a split first, which "
        "a streamed dataset cannot give.",
    )
    template: str | None = _f(
        None,
        "Hand-crafted prompt for zero-shot CLIP and the methods' teachers: a template "
        "table name (coop, prograd, kgcoop) or a format string with one '{}'.",
        shown="the preset's table, else the dataset's CoOp template",
    )
    shots: int = _f(
        16,
        "Training images per class (-1 for all). A class with fewer images uses all it has; the "
        "results record the counts.",
    )
    seed: int = _f(1, "Run seed (few-shot sampling, initialisation, data order).", min=0, max=2**32 - 1)
    protocol: str = _f("base2new", f"Evaluation protocol, one of {', '.join(PROTOCOLS)}.", choices=PROTOCOLS)
    eval_datasets: list[str] | None = _f(
        None,
        "Target datasets for cross_dataset / domain_generalization.",
        shown="for imagenet: the 10 other datasets / the four ImageNet variants",
    )
    train_crop_scale: list[float] = _f(
        lambda: [0.08, 1.0],
        "Area range (min max) of the training random resized crop (CoOp and successors: 0.08 1.0).",
        shown="0.08 1.0",
    )
    # -- model -----------------------------------------------------------------------------------------------------
    model: str | None = _f(
        None,
        "CLIP checkpoint: local folder or Hub id (e.g. openai/clip-vit-base-patch16).",
        shown="the toy CLIP shipped in peft_vlprompt/toy/toy_clip",
    )
    dtype: str = _f(
        "float32",
        "Dtype of the frozen CLIP; the learned tensors stay float32 (peft_vlprompt.precision.cast_frozen). "
        "float16 needs --mixed_precision fp16 (loss scaling), hence a GPU.",
        choices=DTYPES,
    )
    attn_implementation: str | None = _f(
        None,
        "Attention kernel of the CLIP model (flash_attention_2 needs the flash-attn package and a GPU; the "
        "shared-prefix text encoding then falls back to the full text tower).",
        shown="transformers' choice",
        choices=ATTN_IMPLEMENTATIONS,
    )
    gradient_checkpointing: bool = _f(
        False, "Recompute each CLIP layer's activations in backward (less memory, more time; same numbers)."
    )
    torch_compile: bool = _f(False, "torch.compile the training forward (`nn.Module.compile`).")
    # -- optimisation ----------------------------------------------------------------------------------------------
    num_epochs: int | None = _f(None, "Training epochs.", shown="the method's preset", min=1)
    lr: float | None = _f(None, "Peak SGD learning rate.", shown="the method's preset", gt=0)
    batch_size: int | None = _f(
        None, "Training batch size per device.", shown="the method's preset (the papers' batch)", min=1
    )
    eval_batch_size: int = _f(100, "Evaluation batch size per device.", min=1)
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.", min=1)
    momentum: float = _f(0.9, "SGD momentum (Dassl default).", min=0, max=1)
    weight_decay: float = _f(5e-4, "SGD weight decay (Dassl default).", min=0)
    warmup_epochs: int = _f(1, "Constant warm-up epochs before the cosine (Dassl: 1).", min=0)
    warmup_lr: float = _f(1e-5, "Learning rate of the warm-up epochs (Dassl: 1e-5).", min=0)
    lr_granularity: str = _f(
        "epoch",
        "'epoch': the cosine is stepped once per epoch as in Dassl; 'step': same curve, per iteration.",
        choices=GRANULARITIES,
    )
    max_grad_norm: float | None = _f(None, "Clip the gradient norm to this value.", shown="no clipping (papers)", gt=0)
    max_train_steps: int | None = _f(
        None,
        "Stop after this many optimizer steps (quick runs, or ending a run at a "
        "checkpoint). The learning-rate schedule still spans --num_epochs, so resuming "
        "the stopped run gives the full run.",
        shown="all epochs",
        min=1,
    )
    mixed_precision: str | None = _f(
        None,
        "no / bf16 / fp16 (fp16 needs a GPU).",
        shown="the `accelerate launch` configuration",
        choices=MIXED_PRECISION,
    )
    torch_threads: int | None = _f(
        None,
        "torch intra-op CPU threads. Tiny models such as the toy CLIP run fastest "
        "with 1, and a busy machine can make more threads much slower.",
        shown="torch's choice",
        min=1,
    )
    cpu: bool = _f(
        False,
        "Run on CPU even when a GPU is present. A multi-process launch on a machine without a GPU "
        "(e.g. `accelerate launch --multi_gpu --num_processes 2`) uses CPU + gloo automatically.",
    )
    # -- method-specific -------------------------------------------------------------------------------------------
    kd_weight: float | None = _f(
        None,
        "Weight of the distillation term to zero-shot CLIP for methods that support one (dpl, deep_prompt).",
        shown="0 (DPL's released training multiplies it by 0)",
        min=0,
    )
    kd_temperature: float = _f(1.0, "Temperature of that distillation term.", gt=0)
    prograd_lambda: float | None = _f(
        None,
        "ProGrad's gradient projection on any adapter's trainable tensors (e.g. --method clip_lora), with this "
        "lambda: per tensor, the task gradient's component that conflicts with the general direction (the gradient "
        "of the soft cross-entropy to zero-shot CLIP's logits, computed by the frozen model with the adapter "
        "disabled) is projected out. The prograd method sets its own (adapter `lambda_`).",
        shown="off",
        min=0,
    )
    kgcoop_weight: float | None = _f(
        None,
        "KgCoOp's term on any adapter: weight x (1 - mean cosine) between the adapted model's text features of the "
        "template prompts and the frozen model's (the hand-crafted features). With LoRA both towers change; the term "
        "constrains the text side only. The kgcoop method sets its own (adapter `kg_weight`).",
        shown="off",
        gt=0,
    )
    select_on: str = _f(
        "last",
        "Which epoch's adapter is kept and tested: 'last' (the papers') or 'validation' (the epoch with the best "
        "accuracy on the dataset's validation split, training classes only; never the test split). The results "
        "record the choice.",
        choices=SELECT_ON,
    )
    # -- doing less work -------------------------------------------------------------------------------------------
    cache_image_features: bool = _f(
        False,
        "Encode --num_views augmented views of every training image once with the "
        "frozen image tower and train on the cached features (only for methods that do "
        "not prompt the image tower). Epoch e uses view e mod num_views; with num_views "
        ">= num_epochs the numbers equal the uncached run.",
    )
    num_views: int = _f(4, "Augmented views per image cached by --cache_image_features.", min=1)
    class_chunk_size: int = _f(256, "Classes per text-encoder call (memory bound).", min=1)
    text_memory_budget_mb: int = _f(
        2048,
        "Text-tower activations (MiB, estimated) a training step may keep for backward; above it each text-encoder "
        "call is recomputed in backward instead (same numbers, bounded memory; CoCoOp encodes images x classes rows).",
        min=1,
    )
    verify_images: bool = _f(
        False,
        "Decode every image of the run's splits once before the model is built (slow on big datasets); that every "
        "image file a split references exists is always checked.",
    )
    dataloader_num_workers: int = _f(0, "DataLoader worker processes.", min=0)
    eval_zero_shot: bool = _f(
        True,
        "Also evaluate zero-shot CLIP (adapters disabled) on every test split.",
        no_help="Skip the zero-shot CLIP evaluation (same as --eval_zero_shot false).",
    )
    # -- output, checkpoints ---------------------------------------------------------------------------------------
    output_dir: str | None = _f(
        None,
        "Where the adapter, checkpoints and all_results.json go.",
        shown="runs/<method>_<dataset>_<protocol>_<shots>shots_seed<seed>",
    )
    checkpointing_steps: str | None = _f(
        None,
        "Save a resumable checkpoint every N optimizer steps (an integer) or every 'epoch'.",
        shown="no checkpoints",
    )
    checkpoints_total_limit: int | None = _f(
        None,
        "Keep only the newest N checkpoints: older ones are deleted only after the new one is complete, so a crash "
        "never leaves fewer than one complete checkpoint.",
        shown="keep all",
        min=1,
    )
    resume_from_checkpoint: str | None = _f(
        None,
        "Checkpoint folder to resume from, or 'latest' for the newest in "
        "<output_dir>/checkpoints. The run's arguments must equal the "
        "checkpoint's.",
    )
    # -- tracking, Hub ---------------------------------------------------------------------------------------------
    with_tracking: bool = _f(False, "Log metrics to the installed trackers.")
    report_to: str = _f(
        "all",
        "Tracker(s) for --with_tracking, comma-separated: 'all' (every installed one), tensorboard, wandb, trackio, "
        "aim, comet_ml, mlflow, clearml, dvclive or swanlab. Training losses and every evaluation's accuracies "
        "(zero-shot, trained; base/new/HM or per target dataset) are logged.",
    )
    tracker_project_name: str = _f(
        "peft_vlprompt", "Project (run) name given to the trackers; tensorboard writes <output_dir>/<this name>/."
    )
    logging_steps: int = _f(10, "Log the loss terms every N optimizer steps.", min=1)
    push_to_hub: bool = _f(False, "Upload the trained adapter and its model card.")
    hub_model_id: str | None = _f(None, "Hub repository for --push_to_hub (user/name).")
    hub_private: bool = _f(False, "Create the Hub repository as private.")
    # where each value came from (`COMMAND_LINE`, `CONFIG_FILE`, `DEFAULT_RUN_SOURCE`, `PRESET`); unset: the default
    sources: dict = field(default_factory=dict, metadata={"cli": False, "validate": False, "help": "Value sources."})

    def __post_init__(self):
        check_fields(self)
        if self.shots != -1 and self.shots < 1:
            raise ValueError(f"`shots` must be >= 1 or -1 (all images), got {self.shots}")
        scale = self.train_crop_scale
        if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
            raise ValueError(f"`train_crop_scale` must be two numbers 0 < min <= max <= 1, got {list(scale)}")
        self.train_crop_scale = [float(v) for v in scale]
        parse_checkpointing_steps(self.checkpointing_steps)  # the rule the DPL search shares
        if self.dtype == "float16" and self.mixed_precision != "fp16":
            raise ValueError(
                "`dtype`='float16' needs loss scaling against fp16 gradient underflow: add --mixed_precision fp16 "
                "(a GPU), or use --dtype bfloat16"
            )
        if self.cpu and self.mixed_precision == "fp16":  # without --cpu, the loop checks for a GPU before loading
            raise ValueError(
                "`mixed_precision`='fp16' needs a GPU, but `cpu` is set: on CPU use --mixed_precision bf16 or no"
            )
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("`hub_model_id` is required with `push_to_hub` (e.g. --hub_model_id user/coop-dtd)")
        check_data_source(self, _default_of(TrainArguments.__dataclass_fields__["dataset"]))
        parse_trackers(self.report_to)
        self._check_nothing_ignored()
        if self.adapter_kwargs is not None:
            try:
                parsed = json.loads(self.adapter_kwargs)
            except json.JSONDecodeError as e:
                raise ValueError(f"`adapter_kwargs` must be a JSON object, got {self.adapter_kwargs!r} ({e})") from e
            if not isinstance(parsed, dict):
                raise ValueError(f"`adapter_kwargs` must be a JSON object, got {self.adapter_kwargs!r}")

    @property
    def custom_dataset(self) -> bool:
        """The data come from --dataset_name or --train_dir (not from a registered dataset)."""
        return self.dataset_name is not None or self.train_dir is not None

    def trackers(self) -> list[str]:
        """`report_to` as accelerate's `log_with`."""
        return parse_trackers(self.report_to)

    def _check_nothing_ignored(self) -> None:
        """A value that would have no effect in this run is an error, not silently ignored."""
        unused = [
            ("eval_datasets", self.eval_datasets is not None, self.protocol in ("few_shot", "base2new"),
             f"`protocol` {self.protocol!r} evaluates on the training dataset only; targets need cross_dataset or "
             "domain_generalization"),
            ("num_views", self.num_views != 4, not self.cache_image_features, "it needs --cache_image_features"),
            ("hub_model_id", self.hub_model_id is not None, not self.push_to_hub, "it needs --push_to_hub"),
            ("hub_private", self.hub_private, not self.push_to_hub, "it needs --push_to_hub"),
            ("checkpoints_total_limit", self.checkpoints_total_limit is not None, self.checkpointing_steps is None,
             "no checkpoints are saved without --checkpointing_steps"),
            ("report_to", self.report_to != "all", not self.with_tracking, "it needs --with_tracking"),
            ("tracker_project_name", self.tracker_project_name != "peft_vlprompt", not self.with_tracking,
             "it needs --with_tracking"),
            ("data_dir", self.data_dir is not None, self.custom_dataset,
             "--dataset_name/--train_dir name the data themselves"),
            ("dataset_config_name", self.dataset_config_name is not None, self.dataset_name is None,
             "it is the configuration of a --dataset_name Hub dataset"),
            ("validation_dir", self.validation_dir is not None, self.train_dir is None, "it needs --train_dir"),
            ("class_names_file", self.class_names_file is not None, not self.custom_dataset,
             "a registered dataset names its classes; it needs --dataset_name or --train_dir"),
            ("image_column", self.image_column != "image", self.dataset_name is None,
             "it needs --dataset_name (an imagefolder's column is 'image')"),
            ("label_column", self.label_column != "label", self.dataset_name is None,
             "it needs --dataset_name (an imagefolder's column is 'label')"),
        ]  # fmt: skip
        for name, given, ignored, why in unused:
            if given and ignored:
                raise ValueError(f"`{name}`={getattr(self, name)!r} would be ignored: {why}")

    def default_output_dir(self) -> str:
        shots = "all" if self.shots == -1 else self.shots
        dataset = self.dataset.replace("/", "_")  # a Hub id names one folder
        return f"runs/{self.method}_{dataset}_{self.protocol}_{shots}shots_seed{self.seed}"

    @property
    def checkpoint_every(self) -> int | str | None:
        """`checkpointing_steps` parsed: an int, 'epoch' or None."""
        return parse_checkpointing_steps(self.checkpointing_steps)

    def adapter_overrides(self) -> dict:
        return {} if self.adapter_kwargs is None else json.loads(self.adapter_kwargs)

    def explicit(self) -> set[str]:
        """Fields the user set: on the command line, or (built in Python) to something else than the default."""
        if self.sources:
            return {k for k, source in self.sources.items() if source == COMMAND_LINE}
        return {f.name for f in cli_fields() if getattr(self, f.name) != _default_of(f)}


def _default_of(f):
    return f.default_factory() if f.default_factory is not MISSING else f.default


def cli_fields():
    return [f for f in fields(TrainArguments) if f.metadata.get("cli", True)]
