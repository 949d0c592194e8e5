"""Everything the loop builds before training: the CLIP, the adapter config, the protocol's data splits."""

import logging
import math
from dataclasses import dataclass
from typing import Any

from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
from peft.tuners.tuners_utils import BaseTunerLayer
from peft.utils.peft_types import PeftType
from torch import nn

from .._validation import check_known_keys
from ..backbones import family_of, load_backbone
from ..data import TEMPLATES, get_dataset_spec, load_task
from .inputs import read_config_file  # noqa: F401  (re-exported: it moved to the light module `inputs`)

logger = logging.getLogger(__name__)

# Default targets when the source is ImageNet (methods.md §10-§11)
CROSS_DATASET_TARGETS = ["caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
                         "sun397", "dtd", "eurosat", "ucf101"]  # fmt: skip
DG_TARGETS = ["imagenet_v2", "imagenet_sketch", "imagenet_a", "imagenet_r"]


@dataclass
class EvalSplit:
    """One test set: its name in the results, the `datasets.Dataset`, its class names and zero-shot template."""

    name: str
    dataset: Any
    classnames: list[str]
    template: str


@dataclass
class ProtocolData:
    """The training task and the test splits of a protocol."""

    train: Any  # TaskData whose `.train` is trained on
    eval_splits: list[EvalSplit]


def load_clip(model: str | None):
    """`(model, tokenizer, image_processor)` of any supported family from a folder or Hub id (default: the shipped
    toy CLIP), through `AutoModel` / `AutoImageProcessor` and the family's tokenizer rule (`load_backbone`)."""
    from ..model_refs import TOY_CLIP_NAME, resolve_model_reference

    return load_backbone(resolve_model_reference(TOY_CLIP_NAME if model is None else model))  # the toy's name too


def prompts_image_tower(model: nn.Module) -> bool:
    """Whether an adapter changes image features (a tuner layer in the vision tower or the visual projection)."""
    modules = family_of(model).tower_modules(model, "vision")
    return any(isinstance(m, BaseTunerLayer) for m in modules)


def peft_type_name(value) -> str:
    """'coop' for PeftType.COOP, 'COOP' or 'coop'."""
    return str(getattr(value, "value", value)).lower()


def config_from_dict(adapter: dict, overrides: dict, source: str = "`config`"):
    """Instantiate the registered config class of `adapter["peft_type"]`, validated: an unknown field (of the file or
    of `--adapter_kwargs`) or a bad value fails naming the field, the value and `source`."""
    name = peft_type_name(adapter["peft_type"])
    member = PeftType.__members__.get(name.upper())
    cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(member) if member is not None else None
    if cls is None:
        raise ValueError(f"{source} has peft_type {name!r}, which is not a registered method")
    check_known_keys(overrides, cls.__dataclass_fields__, f"`adapter_kwargs` for {cls.__name__}")
    kwargs = {k: v for k, v in adapter.items() if k not in ("peft_type", "target_modules")} | overrides
    try:
        return cls.from_peft_type(**kwargs)
    except ValueError as e:  # FieldTypeError included
        raise type(e)(f"{source}: {e}") from None


def template_for(dataset: str, template: str | None, table: str) -> str | None:
    """The `template` argument for `load_task`: the user's, else the method's table when it covers the dataset."""
    if template is not None:
        return template
    name = get_dataset_spec(dataset).name
    return table if name in TEMPLATES.get(table, {}) else None


def eval_targets(args) -> list[str]:
    if args.eval_datasets:
        return list(args.eval_datasets)
    source = get_dataset_spec(args.dataset).name
    if source == "imagenet":
        return list(DG_TARGETS if args.protocol == "domain_generalization" else CROSS_DATASET_TARGETS)
    toy = _toy_targets(source, args.protocol)
    if toy:
        return toy
    raise ValueError(f"`eval_datasets` is required for protocol {args.protocol!r} with source dataset {source!r}")


def _toy_targets(source: str, protocol: str) -> list[str]:
    """Toy world defaults: the source task in the other domains (DG), or the other tasks (cross-dataset)."""
    from ..toy import DEFAULT_DOMAIN, list_domains, list_tasks
    from ..toy.registry import toy_dataset_name

    for task in list_tasks():
        if source == toy_dataset_name(task):
            if protocol == "domain_generalization":
                return [toy_dataset_name(task, d) for d in list_domains() if d != DEFAULT_DOMAIN]
            return [toy_dataset_name(other) for other in list_tasks() if other != task]
    return []


def check_dataset_names(args) -> None:
    """Unknown dataset names fail here, before anything is loaded."""
    get_dataset_spec(args.dataset)
    if args.protocol in ("cross_dataset", "domain_generalization"):
        for name in eval_targets(args):
            get_dataset_spec(name)


def load_protocol_data(args, table: str, needs_train: bool = True) -> ProtocolData:
    """Load the splits of `args.protocol` (few-shot sampling and base/new exactly as CoOp, in `load_task`)."""
    shots = None if args.shots == -1 else args.shots

    def load(name: str, subsample: str, shots_: int | None = shots):
        return load_task(name, args.data_dir, shots=shots_, seed=args.seed, subsample=subsample,
                         template=template_for(name, args.template, table),
                         verify=args.verify_images)  # fmt: skip

    if args.protocol == "base2new":
        base, new = load(args.dataset, "base"), load(args.dataset, "new")
        splits = [EvalSplit("base", base.test, base.classnames, base.template),
                  EvalSplit("new", new.test, new.classnames, new.template)]  # fmt: skip
        task = base
    else:
        task = load(args.dataset, "all")
        if needs_train and (task.train is None or len(task.train) == 0):
            raise ValueError(f"dataset {task.name!r} has no training images; it cannot be the training dataset")
        name = "test" if args.protocol == "few_shot" else "source"  # targets are named by their dataset
        splits = [EvalSplit(name, task.test, task.classnames, task.template)]
        if args.protocol != "few_shot":
            for target in eval_targets(args):
                t = load(target, "all", None)
                splits.append(EvalSplit(t.name, t.test, t.classnames, t.template))
    logger.info(
        "%s: %d training images, %d classes; test splits: %s", task.name,
        0 if task.train is None else len(task.train), task.num_classes,
        ", ".join(f"{s.name} ({len(s.dataset)} images, {len(s.classnames)} classes)" for s in splits),
    )  # fmt: skip
    return ProtocolData(task, splits)


def steps_per_epoch(num_batches: int, accumulation: int) -> int:
    """Optimizer steps per epoch: accelerate syncs every `accumulation` micro-batches and at the epoch's end."""
    return max(1, math.ceil(num_batches / accumulation))
