"""The command line as transformers users know it: their flag names (aliases of ours), `examples/train.py args.json`,
any `datasets` source (`--dataset_name` / `--train_dir`) and accelerate's trackers. Standard library only, like
`args.py`: these checks run before torch is imported."""

import os

# transformers' names of our flags (`run_*_no_trainer.py`, `TrainingArguments`): accepted on the command line and in
# --config files; giving both names with different values is an error
ALIASES = {
    "model_name_or_path": "model",
    "learning_rate": "lr",
    "num_train_epochs": "num_epochs",
    "per_device_train_batch_size": "batch_size",
    "per_device_eval_batch_size": "eval_batch_size",
    "image_column_name": "image_column",
    "label_column_name": "label_column",
}
# accelerate 1.15's trackers (`accelerate.tracking.LOGGER_TYPE_TO_CLASS`), each with the package it needs installed;
# "all" is every installed one
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio", "aim": "aim",
                    "comet_ml": "comet_ml", "mlflow": "mlflow", "clearml": "clearml", "dvclive": "dvclive",
                    "swanlab": "swanlab"}  # fmt: skip
TRACKERS = ("all", *TRACKER_PACKAGES)
DATA_SOURCE_FIELDS = ("dataset_name", "train_dir", "validation_dir", "class_names_file", "image_column",
                      "label_column", "dataset_config_name")  # fmt: skip


def resolve_aliases(values: dict, where: str = "on the command line") -> dict:
    """`values` with transformers' names (`ALIASES`) replaced by ours; both names with different values is an error."""
    out = dict(values)
    for alias, name in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if name in out and out[name] != value:
            raise ValueError(f"`{alias}` is an alias of `{name}`: give one, got {name}={out[name]!r} and "
                             f"{alias}={value!r} {where}")  # fmt: skip
        out[name] = value
    return out


def json_file_argv(argv: list[str]) -> list[str]:
    """`examples/train.py args.json [flags]`: a first argument naming a .json file is read as `--config` is (its
    training arguments under the flags given, as `HfArgumentParser.parse_json_file` reads such a file)."""
    if argv and argv[0].endswith(".json") and not argv[0].startswith("-"):
        if any(a == "--config" or a.startswith("--config=") for a in argv[1:]):
            raise ValueError(f"give the arguments file {argv[0]!r} or --config, not both")
        return ["--config", argv[0], *argv[1:]]
    return argv


def parse_trackers(report_to: str) -> list[str]:
    """`report_to` ('all' or comma-separated tracker names) as accelerate's `log_with`, validated."""
    names = [n.strip() for n in report_to.split(",")]
    if any(n not in TRACKERS for n in names):
        raise ValueError(f"`report_to` must be 'all' or comma-separated trackers of {TRACKERS[1:]}, got "
                         f"{report_to!r}")  # fmt: skip
    return names


def check_data_source(args, registered_default: str) -> None:
    """One data source; a --dataset_name/--train_dir one is recorded under --dataset, by default a name derived from
    its source (`source_dataset_name`) while --dataset still has its default `registered_default`."""
    if args.streaming:
        raise ValueError("`streaming`=True cannot be honoured: few-shot sampling and the base/new class split read "
                         "every label of a split before choosing images, which a streamed (iterable) dataset "
                         "cannot give; drop --streaming (datasets downloads and caches the dataset)")  # fmt: skip
    if args.dataset_name is not None and args.train_dir is not None:
        raise ValueError(f"give one data source: `dataset_name`={args.dataset_name!r} or `train_dir`="
                         f"{args.train_dir!r}")  # fmt: skip
    for name in DATA_SOURCE_FIELDS:
        value = getattr(args, name)
        if value is not None and not value.strip():
            raise ValueError(f"`{name}` must not be empty, got {value!r}")
    if (args.dataset_name is not None or args.train_dir is not None) and args.dataset == registered_default:
        args.dataset = source_dataset_name(args.dataset_name, args.dataset_config_name, args.train_dir)


def source_dataset_name(dataset_name: str | None, dataset_config_name: str | None, train_dir: str | None) -> str:
    """The name a --dataset_name/--train_dir dataset is recorded under when --dataset does not name it: the Hub id
    (with its configuration), or the folder's name (the parent's for a folder named train), lower case."""
    if dataset_name is not None and not os.path.isdir(os.path.expanduser(dataset_name)):
        name = dataset_name + (f"-{dataset_config_name}" if dataset_config_name else "")
    else:
        path = os.path.normpath(os.path.abspath(os.path.expanduser(dataset_name or train_dir)))
        name = os.path.basename(path)
        if train_dir is not None and name.lower() == "train":
            name = os.path.basename(os.path.dirname(path))
    return name.lower()
