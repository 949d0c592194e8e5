"""`--method linear_probe` / `--method linear_probe_text` in the training loop: the protocol's splits, frozen image
features of un-augmented images, the L2 strength chosen on the validation split (never the test split), then the
test splits the probe can classify. A probe has weights for its training classes only, so base-to-new reports base
accuracy alone and cross-dataset targets with other classes are not scored; the results say so (`not_evaluated`)."""

import logging
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import save as save_safetensors

from .._atomic import atomic_write_bytes, atomic_write_json
from ..classifier import PromptClassifier
from ..finite import check_finite
from ..training.build import EvalSplit, load_clip, load_protocol_data
from ..training.evaluation import encode_images, make_eval_loader
from ..training.metrics import accuracy as percent
from ..training.metrics import per_class_accuracy
from ..training.presets import PresetContext, get_preset
from ..training.results import assemble_results
from .linear_probe import L2_GRID, select_probe
from .training import user_given

logger = logging.getLogger(__name__)

PROBES = {"linear_probe": "plain", "linear_probe_text": "text-initialised"}
# training-loop settings a probe has no use for: a user value for one is refused, not ignored
_NOT_FOR_PROBES = ("num_epochs", "lr", "batch_size", "gradient_accumulation_steps", "momentum", "weight_decay",
                   "warmup_epochs", "warmup_lr", "lr_granularity", "max_grad_norm", "max_train_steps",
                   "train_crop_scale", "checkpointing_steps", "checkpoints_total_limit", "resume_from_checkpoint",
                   "cache_image_features", "num_views", "config", "adapter_kwargs", "push_to_hub", "kd_weight",
                   "kd_temperature", "gradient_checkpointing", "torch_compile")  # fmt: skip
_NO_NEW = "a probe has weights for its training classes only (no classifier for classes it never saw)"


def check_probe_args(spec, args) -> None:
    ignored = [k for k in _NOT_FOR_PROBES if k in user_given(args)]
    if ignored:
        raise ValueError(f"{', '.join(f'`{k}`' for k in ignored)} would be ignored: method {spec.name!r} fits a "
                         "logistic regression with L-BFGS on frozen features, its L2 strength chosen on the "
                         "validation split")  # fmt: skip


def run_probe(args, spec) -> dict:
    """Fit and evaluate the probe; writes `all_results.json`, `per_class_accuracy.json` and `probe.safetensors`."""
    check_probe_args(spec, args)
    t0 = time.time()
    accelerator = Accelerator(cpu=args.cpu, mixed_precision=args.mixed_precision)
    set_seed(args.seed)
    data = load_protocol_data(args, get_preset(spec.name, PresetContext(args.protocol, args.shots, args.dataset))
                              .template_table, needs_train=True)  # fmt: skip
    task = data.train
    if task.val is None or len(task.val) == 0:
        raise ValueError(f"method {spec.name!r} chooses its L2 strength on a validation split, and dataset "
                         f"{task.name!r} has none")  # fmt: skip
    clip, tokenizer, processor = load_clip(args.model)
    clf = PromptClassifier(clip, tokenizer, task.classnames, template=task.template, image_processor=processor,
                           class_chunk_size=args.class_chunk_size).eval()  # fmt: skip
    clip.to(accelerator.device)

    def features(split: EvalSplit):
        loader = make_eval_loader(split, processor, args.eval_batch_size, args.dataloader_num_workers, accelerator)
        return encode_images(clf, loader, accelerator)

    x_train, y_train = features(EvalSplit("train", task.train, task.classnames, task.template))
    x_val, y_val = features(EvalSplit("validation", task.val, task.classnames, task.template))
    with torch.no_grad():
        text = clf.zero_shot_text_features().float().cpu()
    anchor = clf.logit_scale().item() * text if PROBES[spec.name] == "text-initialised" else None
    probe, scores = select_probe(x_train, y_train, x_val, y_val, task.num_classes, anchor.double() if anchor
                                 is not None else None)  # fmt: skip
    logger.info("%s: L2 %.3g chosen on the validation split (accuracy %.2f; grid %s)", spec.name, probe.l2,
                scores[probe.l2], {f"{k:.0e}": v for k, v in scores.items()})  # fmt: skip

    trained, zero_shot, skipped = {}, {}, {}
    for split in data.eval_splits:
        x, y = features(split)
        if args.eval_zero_shot:
            clf.set_classnames(split.classnames)
            clf.template = split.template
            zs = (x @ clf.zero_shot_text_features().float().cpu().T).argmax(-1)
            zero_shot[split.name] = _scores(zs, y, len(split.classnames))
        if list(split.classnames) != list(task.classnames):
            skipped[split.name] = _NO_NEW
            continue
        trained[split.name] = _scores(probe.logits(x).argmax(-1), y, task.num_classes)
    return _write(args, spec, data, probe, scores, trained, zero_shot or None, skipped, time.time() - t0, accelerator)


def _scores(pred, y, n):
    return {"accuracy": percent(pred, y), "per_class_accuracy": per_class_accuracy(pred, y, n)}


def _write(args, spec, data, probe, scores, trained, zero_shot, skipped, runtime, accelerator) -> dict:
    names = [s.name for s in data.eval_splits]
    summary = assemble_results(args, spec, None, data, zero_shot, None, 0, runtime)["summary"]
    for key in summary.get("zero_shot", {}):  # assemble_results copies zero-shot numbers up for `zeroshot` only
        summary.pop(key, None)
    acc = {n: round(trained[n]["accuracy"], 4) for n in trained}
    if args.protocol == "base2new":
        summary["base_accuracy"] = acc["base"]
    elif args.protocol == "few_shot":
        summary["accuracy"] = acc["test"]
    else:
        summary["accuracy"] = acc[names[0]]
        summary["target_accuracy"] = {n: acc[n] for n in names[1:] if n in acc}
    if skipped:
        summary["not_evaluated"] = skipped
    summary["probe"] = {"kind": PROBES[spec.name], "solver": "L-BFGS (full batch, float64)", "l2": probe.l2,
                        "selected_on": "validation", "validation_accuracy": round(scores[probe.l2], 4),
                        "validation_by_l2": {repr(k): round(v, 4) for k, v in scores.items()},
                        "l2_grid": [min(L2_GRID), max(L2_GRID), len(L2_GRID)]}  # fmt: skip
    per_class = {"trained": {n: trained[n]["per_class_accuracy"] for n in trained},
                 "classnames": {s.name: s.classnames for s in data.eval_splits}}  # fmt: skip
    if zero_shot:
        per_class["zero_shot"] = {n: zero_shot[n]["per_class_accuracy"] for n in names}
    if accelerator.is_main_process:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        tensors = {"weight": probe.weight.float().contiguous(), "bias": probe.bias.float().contiguous()}
        check_finite(tensors.items(), f"refusing to save the probe of {spec.name}")
        atomic_write_bytes(out / "probe.safetensors", save_safetensors(tensors, {"l2": repr(probe.l2)}))
        atomic_write_json(out / "all_results.json", summary)
        atomic_write_json(out / "per_class_accuracy.json", per_class)
    return summary
