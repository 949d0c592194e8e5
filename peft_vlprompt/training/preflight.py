"""Every check of a training run that loads neither data nor a model, run before any work (`check_run`).

`examples/train.py` calls `check_run` right after parsing to end a refused run with one line; `train` starts with it.
"""

from pathlib import Path

import torch

from ..baselines.regularisers import check_regularisers
from ..baselines.selection import check_selection
from ..baselines.training import check_optimizer_args
from .args import TrainArguments
from .build import check_dataset_names, peft_type_name
from .checkpoint import check_checkpoint, check_output_dir, resolve_checkpoint
from .inputs import apply_config_file, check_paths, read_class_names
from .method_checks import check_adapter_settings, resolve_method
from .methods import MethodSpec, get_method
from .presets import PresetContext, get_preset
from .trackers import check_trackers


def _check_device_options(args: TrainArguments) -> None:
    """fp16 and flash attention need a GPU (and flash-attn): refused before any data or model is loaded."""
    gpu = torch.cuda.is_available() and not args.cpu
    if args.mixed_precision == "fp16" and not gpu:
        where = "`cpu` is set" if args.cpu else "torch.cuda.is_available() is False"
        raise ValueError(
            f"`mixed_precision`='fp16' needs a GPU ({where}): use --mixed_precision bf16 or no, and --dtype "
            "bfloat16 or float32"
        )
    if args.attn_implementation == "flash_attention_2":
        import importlib.util

        if not gpu or importlib.util.find_spec("flash_attn") is None:
            raise ValueError(
                "`attn_implementation`='flash_attention_2' needs a GPU and the flash-attn package: use sdpa or eager"
            )


def _resolve_method(args: TrainArguments) -> tuple[MethodSpec, dict | None]:
    """The method and the `--config` adapter dict; the file's training arguments are merged under the command line's
    and validated (`args.apply_config_file`), and every check that needs no model or data runs here."""
    adapter_dict = apply_config_file(args)
    spec = get_method(resolve_method(args, adapter_dict).name)
    return spec, adapter_dict


def _check_adapter_settings(spec: MethodSpec, adapter_dict: dict | None, args: TrainArguments) -> None:
    """The adapter config (from the file, or the preset's settings + `--adapter_kwargs`) is valid, before any load."""
    check_adapter_settings(spec, adapter_dict, args, get_preset(spec.name, PresetContext(args.protocol, args.shots,
                                                                                          args.dataset)))  # fmt: skip


def _expected_peft_type(spec: MethodSpec, adapter_dict: dict | None) -> str | None:
    if adapter_dict is not None:
        return peft_type_name(adapter_dict["peft_type"])
    cls = spec.resolved_config_class()
    if cls is None:
        return None
    return getattr(cls, "method_name", None) or peft_type_name(cls().peft_type)  # peft's own configs (LoRA)


def _register_dataset_source(args: TrainArguments) -> None:
    """A --dataset_name/--train_dir dataset is registered under `args.dataset`, so `load_task` applies the protocols
    (few-shot sampling, base-to-new) to it exactly as to the built-in datasets."""
    if not args.custom_dataset:
        return
    from ..data.hf_datasets import register_source_dataset

    names = None if args.class_names_file is None else read_class_names(args.class_names_file)
    register_source_dataset(args.dataset.lower(), dataset_name=args.dataset_name,
                            dataset_config_name=args.dataset_config_name, train_dir=args.train_dir,
                            validation_dir=args.validation_dir, image_column=args.image_column,
                            label_column=args.label_column, classnames=names)  # fmt: skip


def check_run(args: TrainArguments) -> tuple[MethodSpec, dict | None, Path | None]:
    """Every check of a run that loads neither data nor a model: `(method, --config adapter dict, checkpoint to resume
    from)`. `train` starts with it; `examples/train.py` calls it first to end a refused run with one line."""
    spec, adapter_dict = _resolve_method(args)
    check_optimizer_args(spec, args)
    check_regularisers(spec, args)
    check_selection(spec, args)
    check_paths(args)
    _check_adapter_settings(spec, adapter_dict, args)
    _check_device_options(args)
    check_trackers(args)
    if args.output_dir is None:
        args.output_dir = args.default_output_dir()
    _register_dataset_source(args)
    check_dataset_names(args)
    resume_dir = None
    if args.resume_from_checkpoint:  # a checkpoint of another method must fail before any work
        resume_dir = resolve_checkpoint(args.resume_from_checkpoint, args.output_dir)
        check_checkpoint(resume_dir, spec.name, _expected_peft_type(spec, adapter_dict))
    if spec.trains:  # a fresh run into an earlier run's checkpoints fails now, not after an epoch
        check_output_dir(args.output_dir, resuming=resume_dir is not None)
    return spec, adapter_dict, resume_dir
