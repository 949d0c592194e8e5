"""The Accelerate training loop (the transformers `run_*_no_trainer.py` skeleton) for every prompt-learning method.

`main(argv)` parses the arguments, loads the protocol's data (all data errors surface before any model is built),
builds the CLIP + adapter from the method's preset, evaluates zero-shot CLIP, trains with SGD + the Dassl schedule
(ProGrad through its optimizer wrapper, PromptSRC's GPA and RESTORE's ratio update at epoch ends), checkpoints the
adapter only, evaluates, saves the adapter atomically and writes `all_results.json`.
"""

import logging
import os
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from huggingface_hub.constants import REPOCARD_NAME
from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
from torch import nn
from tqdm.auto import tqdm

from ..backbones import backbone_for
from ..baselines.regularisers import with_regularisers
from ..baselines.selection import EpochSelector, check_validation_split
from ..baselines.training import cosine_lr, iteration_budget, make_optimizer, optimizer_record
from ..classifier import PromptClassifier
from ..finite import check_training_step
from ..optim import GaussianPromptAggregator, ProGrad
from ..precision import cast_frozen, frozen_dtype
from .args import PRESET, TrainArguments
from .build import (
    EvalSplit,
    config_from_dict,
    load_clip,
    load_protocol_data,
    peft_type_name,
    prompts_image_tower,
    steps_per_epoch,
)
from .checkpoint import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    CheckpointManager,
    atomic_write_json,
    clean_stale_temps,
    save_adapter_atomically,
)
from .evaluation import Evaluator, make_eval_loader
from .hooks import epoch_end_hooks, image_conditioned
from .loaders import make_train_loader
from .method_checks import (
    check_method_config,
    check_user_depths,
    user_adapter_settings,
)
from .methods import BuildContext
from .objectives import Objective, StepInputs
from .parser import parse_args
from .preflight import check_run
from .presets import PresetContext, apply_preset, get_preset
from .results import assemble_results
from .run_record import RunState, check_resume_adapter, check_resume_args, resolved_adapter_config, run_signature
from .schedule import dassl_lr, set_lr
from .trackers import log_evaluation, start_trackers

logger = logging.getLogger(__name__)


class TrainingModule(nn.Module):
    """What `accelerator.prepare` wraps: one forward gives the logits and the objective's named loss terms, so DDP
    sees one forward per micro-step and autocast covers all of it."""

    def __init__(self, classifier: PromptClassifier, objective: Objective) -> None:
        super().__init__()
        self.classifier = classifier
        self.objective = objective
        self.conditioned = image_conditioned(classifier.model)

    def forward(self, labels, pixel_values=None, image_features=None, position=None):
        clf = self.classifier
        if image_features is None:
            image_features = clf.image_features(pixel_values)
        if self.conditioned:  # CoCoOp: one prompt set per image, text features (B, C, D)
            text = None
            logits = clf.logits(image_features, clf.conditioned_text_features(image_features))
        else:
            text = clf.text_features()
            logits = clf.logits(image_features, text)
        terms = self.objective(StepInputs(clf, logits, labels, image_features, text, pixel_values))
        return {"logits": logits, "terms": terms}


def _optimizer_and_prograd(spec, config, preset, args, params):
    optimizer = make_optimizer(spec, preset, args, params)
    if not spec.uses_prograd and args.prograd_lambda is None:
        return optimizer, None
    lam = args.prograd_lambda  # --prograd_lambda on any adapter, else the prograd method's own
    if lam is None:
        lam = getattr(config, "lambda_", preset.adapter.get("lambda_", 1.0))
    prograd = ProGrad(optimizer, lambda_=float(lam))
    return prograd, prograd


def _multi_process_without_gpu() -> bool:
    """A torchrun-style launch (WORLD_SIZE > 1) on a machine without CUDA/XPU: DDP on CPU with gloo.

    (accelerate 1.15's `accelerate launch --cpu --num_processes N` starts ONE process unless MPI is set up;
    `--multi_gpu --num_processes N` starts N, which without this flag would each run alone.)
    """
    xpu = getattr(torch, "xpu", None)
    has_device = torch.cuda.is_available() or (xpu is not None and xpu.is_available())
    return not has_device and int(os.environ.get("WORLD_SIZE", "1")) > 1


def train(args: TrainArguments) -> dict:
    """Run one experiment; returns the results also written to `<output_dir>/all_results.json`."""
    spec, adapter_dict, resume_dir = check_run(args)
    if args.torch_threads is not None:
        torch.set_num_threads(args.torch_threads)
    if spec.optimizer == "closed_form":  # linear probes: no adapter, no gradient loop
        from ..baselines.probe_run import run_probe

        return run_probe(args, spec)
    project = ProjectConfiguration(project_dir=args.output_dir)  # checkpoints are ours (checkpoint.py), not save_state
    accelerator = Accelerator(
        cpu=args.cpu or _multi_process_without_gpu(),
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        mixed_precision=args.mixed_precision,
        log_with=args.trackers() if args.with_tracking else None,
        project_config=project,
    )
    start_trackers(accelerator, args)  # before the zero-shot evaluation, whose accuracies are logged too
    if accelerator.is_main_process:
        clean_stale_temps(args.output_dir)
    set_seed(args.seed)
    ctx0 = PresetContext(args.protocol, args.shots, args.dataset)
    if args.template is None and get_preset(spec.name, ctx0).template is not None:  # CLIP-LoRA: one for all datasets
        args.template = get_preset(spec.name, ctx0).template
        args.sources["template"] = PRESET
    data = load_protocol_data(args, get_preset(spec.name, ctx0).template_table, needs_train=spec.trains)
    task = data.train
    check_validation_split(args, task)
    train_size = None if task.train is None else len(task.train)
    preset = get_preset(spec.name, PresetContext(args.protocol, args.shots, task.name, task.template, train_size))
    apply_preset(args, spec.name, preset, trains=spec.trains)
    if resume_dir is not None:
        check_resume_args(resume_dir, args)

    clip, tokenizer, image_processor = load_clip(args.model)
    if args.attn_implementation is not None:
        clip.set_attn_implementation(args.attn_implementation)
    if args.gradient_checkpointing:  # non-reentrant: the frozen inputs need no grad for the prompts to get theirs
        clip.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    set_seed(args.seed)  # adapter initialisation does not depend on what data loading drew
    config = None
    if spec.trains:
        ctx = BuildContext(backbone_for(clip), task.template, task.num_classes, task.name)
        if adapter_dict is None:  # a user's depth deeper than the model is an error; a preset's is clipped (logged)
            check_user_depths(spec, args, ctx.backbone.text_layers, ctx.backbone.vision_layers)
        if adapter_dict is not None:
            config = config_from_dict(adapter_dict, args.adapter_overrides())
        else:
            cls = spec.resolved_config_class()
            config = spec.build_config(cls, user_adapter_settings(spec, preset, args), ctx)
        if hasattr(config, "tokenize_with") and ctx.backbone.default_tokenizer() is None:
            config.tokenize_with(tokenizer)  # a family shipping no tokenizer: `ctx_init` in the model's own
        # shared CSC (`class_specific` with `ctx_init` and `class_specific_init="shared"`) is one context for all
        per_class = getattr(config, "per_class_context", getattr(config, "class_specific", False))
        if per_class and args.protocol != "few_shot":
            raise ValueError(f"class-specific context cannot be evaluated on other classes: protocol "
                             f"{args.protocol!r} needs `class_specific=False` (or `ctx_init` with "
                             "`class_specific_init='shared'`)")  # fmt: skip
        check_method_config(spec, config)
        if resume_dir is not None:
            check_resume_adapter(resume_dir, resolved_adapter_config(config, ctx.backbone))
        model = get_peft_model(clip, config)
        logger.info("%s: %d epochs, lr %g, batch %d per process (preset: %s)", spec.name, args.num_epochs, args.lr,
                    args.batch_size, preset.source)  # fmt: skip
    else:
        model = clip
    if args.dtype != "float32":  # after the adapter exists, so its initial values are taken at full precision
        cast_frozen(model, frozen_dtype(args.dtype))
    classifier = PromptClassifier(model, tokenizer, task.classnames, template=task.template,
                                  image_processor=image_processor, class_chunk_size=args.class_chunk_size,
                                  text_memory_budget=args.text_memory_budget_mb * 2**20,
                                  shared_prefix=not getattr(config, "lora_dropout", 0))  # fmt: skip
    vision_prompted = spec.trains and prompts_image_tower(model)
    conditioned = spec.trains and image_conditioned(model)
    objective = with_regularisers(spec.make_objective(config, preset, args), args)
    cache = args.cache_image_features
    if cache and (vision_prompted or objective.needs_pixels or not spec.trains):
        raise ValueError(f"`cache_image_features` cannot be used with method {spec.name!r}: its adapter or "
                         "objective needs the images at every step")  # fmt: skip

    module = TrainingModule(classifier, objective)
    if args.torch_compile:
        module.compile()
    loaders = [make_eval_loader(s, image_processor, args.eval_batch_size, args.dataloader_num_workers, accelerator)
               for s in data.eval_splits]  # fmt: skip
    evaluator = Evaluator(classifier, data.eval_splits, loaders, accelerator, vision_prompted, conditioned)
    results_dir = Path(args.output_dir)
    t0 = time.time()
    zero_shot = None
    if args.eval_zero_shot or not spec.trains:
        module.to(accelerator.device)
        zero_shot = evaluator.run(zero_shot=True)
        log_evaluation(accelerator, args, zero_shot, [s.name for s in data.eval_splits], 0, "zero_shot")

    global_step, record = 0, {}
    if spec.trains:
        global_step = _fit(args, spec, preset, config, model, classifier, module, objective, task, image_processor,
                           accelerator, vision_prompted, cache, resume_dir, record)  # fmt: skip
        save_adapter_atomically(model, results_dir, accelerator.is_main_process)
    trained = evaluator.run(zero_shot=False) if spec.trains else None
    log_evaluation(accelerator, args, trained, [s.name for s in data.eval_splits], global_step, "eval")
    results = assemble_results(
        args, spec, config, data, zero_shot, trained, global_step, time.time() - t0, accelerator.num_processes
    )
    results["summary"].update(record)
    if accelerator.is_main_process:
        atomic_write_json(results_dir / "all_results.json", results["summary"])
        atomic_write_json(results_dir / "per_class_accuracy.json", results["per_class"])
        if spec.trains:
            _write_card(results_dir / ADAPTER_DIR, args, results["summary"], task)
        if args.push_to_hub and spec.trains:
            _push(model, args, results["summary"], task)
        _log_outputs(results_dir, spec.trains, args.checkpointing_steps is not None)
    accelerator.wait_for_everyone()
    if args.with_tracking:
        accelerator.end_training()
    return results["summary"]


def _fit(args, spec, preset, config, model, classifier, module, objective, task, image_processor, accelerator,
         vision_prompted, cache, resume_dir, record) -> int:  # fmt: skip
    """The training epochs; returns the number of optimizer steps taken."""
    named_params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    params = [p for _, p in named_params]
    if not params:
        raise ValueError(f"method {spec.name!r} with this config has no trainable parameter")
    optimizer, prograd = _optimizer_and_prograd(spec, config, preset, args, params)
    module.to(accelerator.device)
    classifier.eval()
    objective.prepare(classifier, vision_prompted)
    train_loader, sampler = make_train_loader(args, task, image_processor, classifier, accelerator, cache)
    module, optimizer, train_loader = accelerator.prepare(module, optimizer, train_loader)

    state = RunState(spec.name, peft_type_name(config.peft_type), run_signature(args))
    gpa = None
    if "gpa_mean" in preset.extra or hasattr(config, "gpa_mean"):
        mean = float(getattr(config, "gpa_mean", preset.extra.get("gpa_mean")))
        std = float(getattr(config, "gpa_std", preset.extra.get("gpa_std")))
        gpa = GaussianPromptAggregator(args.num_epochs, mean, std)
    selector = EpochSelector(args, task, lambda: _validation_evaluator(args, task, classifier, image_processor,
                                                                         accelerator, vision_prompted))  # fmt: skip
    checkpoints = CheckpointManager(accelerator, args.output_dir, peft_model=model, optimizer=optimizer, state=state,
                                    adapter_config=config.to_dict(), gpa=gpa,
                                    total_limit=args.checkpoints_total_limit)  # fmt: skip

    per_epoch = steps_per_epoch(len(train_loader), args.gradient_accumulation_steps)
    total = per_epoch * args.num_epochs
    budget = iteration_budget(spec, preset, args, total)  # None: Dassl's per-epoch schedule
    record.update(optimizer_record(spec, preset, args, budget))
    stop_at = min(total, args.max_train_steps or total, budget or total)
    if resume_dir is not None:
        checkpoints.load(resume_dir)
    start_epoch, done_in_epoch = divmod(state.global_step, per_epoch)
    every = args.checkpoint_every
    last_saved = state.global_step if resume_dir is not None else -1
    progress = tqdm(total=stop_at, initial=min(state.global_step, stop_at),
                    disable=not accelerator.is_local_main_process, desc=f"{spec.name}")  # fmt: skip
    logged: dict[str, list[torch.Tensor]] = {}

    def save():
        nonlocal last_saved
        checkpoints.save()
        last_saved = state.global_step

    for epoch in range(start_epoch, args.num_epochs):
        if state.global_step >= stop_at:
            break
        module.train()
        sampler.set_epoch(epoch)
        train_loader.set_epoch(epoch)
        loader = train_loader
        skip = (done_in_epoch * args.gradient_accumulation_steps) if epoch == start_epoch else 0
        if skip:
            loader = accelerator.skip_first_batches(train_loader, skip)
        epoch_start = epoch * per_epoch
        for batch in loader:
            progress_in_epoch = (state.global_step - epoch_start) / per_epoch if args.lr_granularity == "step" else 0.0
            set_lr(optimizer, cosine_lr(state.global_step, base_lr=args.lr, total=budget,
                                        eta_min=preset.extra["eta_min"]) if budget else
                   dassl_lr(epoch, base_lr=args.lr, num_epochs=args.num_epochs, warmup_epochs=args.warmup_epochs,
                            warmup_lr=args.warmup_lr, progress=min(progress_in_epoch, 0.999999)))  # fmt: skip
            with accelerator.accumulate(module):
                out = module(**batch)
                terms = out["terms"]
                loss = sum(v for k, v in terms.items() if k not in objective.direction_terms)
                if prograd is not None:
                    for k in objective.direction_terms:
                        prograd.add_general_direction(terms[k])
                accelerator.backward(loss)
                if accelerator.sync_gradients and args.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(params, args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients:  # before zero_grad, so a failure can name the first bad tensor
                    check_training_step(state.global_step + 1, terms, named_params, lr=optimizer.param_groups[0]["lr"],
                                        check_grads=accelerator.scaler is None)  # fmt: skip
                optimizer.zero_grad()
            for k, v in terms.items():  # kept on the device: reading them every step would sync a GPU
                logged.setdefault(k, []).append(v.detach().float())
            if not accelerator.sync_gradients:
                continue
            state.global_step += 1
            progress.update(1)
            if state.global_step % args.logging_steps == 0:
                _log(accelerator, logged, state.global_step, epoch, optimizer, prograd, args.with_tracking)
            epoch_done = state.global_step - epoch_start >= per_epoch
            if isinstance(every, int) and state.global_step % every == 0 and not epoch_done:
                save()
            if state.global_step >= stop_at:
                break
        # Leaving the loader early (last step, --max_train_steps) skips the code after its last `yield` that
        # unregisters it from accelerate's process-wide GradientState; a stale entry would make a later
        # `accumulate()` in this process (another run, user code) sync every micro-batch. `end()` is idempotent.
        loader.end()
        epoch_done = state.global_step - epoch_start >= per_epoch
        if epoch_done:
            if gpa is not None:
                gpa.update(epoch, get_peft_model_state_dict(model))
            epoch_end_hooks(model, epoch, args.num_epochs)
            selector.after_epoch(epoch, state.global_step, model)
            if every == "epoch" or (isinstance(every, int) and state.global_step % every == 0):
                save()
    progress.close()
    if every is not None and last_saved != state.global_step:
        save()  # a stopped (--max_train_steps) run ends at a resumable checkpoint
    record.update(selector.finish(model, state.global_step, per_epoch))
    if gpa is not None and gpa.updated_epochs:
        set_peft_model_state_dict(model, gpa.aggregated(renormalize=state.global_step < total))
        logger.info("GPA: loaded the Gaussian-weighted average of epochs %s", gpa.updated_epochs)
    accelerator.wait_for_everyone()
    return state.global_step


def _validation_evaluator(args, task, classifier, image_processor, accelerator, vision_prompted) -> Evaluator:
    """An `Evaluator` over the training task's validation split (training classes only), for `--select_on`."""
    split = EvalSplit("validation", task.val, task.classnames, task.template)
    loader = make_eval_loader(split, image_processor, args.eval_batch_size, args.dataloader_num_workers, accelerator)
    return Evaluator(classifier, [split], [loader], accelerator, vision_prompted, image_conditioned(classifier.model))


def _log_outputs(results_dir: Path, trained: bool, checkpointed: bool) -> None:
    """Say where the run wrote what (absolute paths: the run may have been started from anywhere)."""
    root = results_dir.resolve()
    lines = [f"results: {root / 'all_results.json'} (per class: {root / 'per_class_accuracy.json'})"]
    if trained:
        lines.append(f"adapter and model card: {root / ADAPTER_DIR}")
    if checkpointed:
        lines.append(f"checkpoints: {root / CHECKPOINTS_DIR}")
    logger.info("wrote %s", "; ".join(lines))


def _log(accelerator, logged, step, epoch, optimizer, prograd, tracking):
    values = {f"train/{k}": torch.stack(v).mean().item() for k, v in logged.items()}
    values["train/lr"] = optimizer.param_groups[0]["lr"]
    values["train/epoch"] = epoch
    if prograd is not None:
        values.update(prograd.last_stats)
    logged.clear()
    logger.info("step %d: %s", step, ", ".join(f"{k}={v:.4g}" for k, v in values.items()))
    if tracking:
        accelerator.log(values, step=step)


def _write_card(adapter_dir: Path, args, summary, task) -> None:
    """Replace the generic card `save_pretrained` wrote into the adapter folder by ours (results, usage, citation)."""
    from ..hub import render_card

    card = render_card(adapter_dir, results=summary, training_config=vars(args), classnames=task.classnames,
                       template=task.template, warn_local_base=False)  # fmt: skip
    tmp = adapter_dir / f".{REPOCARD_NAME}.tmp"
    card.save(tmp)
    os.replace(tmp, adapter_dir / REPOCARD_NAME)


def _push(model, args, summary, task):
    try:
        from ..hub import push_prompts
    except ImportError:
        logger.warning("--push_to_hub: peft_vlprompt.hub.push_prompts is not available; the adapter was not pushed")
        return
    push_prompts(model, args.hub_model_id, results=summary, training_config=vars(args), private=args.hub_private,
                 classnames=task.classnames, template=task.template)  # fmt: skip
    logger.info("pushed the adapter and its model card to %s", args.hub_model_id)


def main(argv: list[str] | None = None) -> dict:
    """Entry point: `main(["--method", "coop", ...])`; `argv=None` reads `sys.argv`, `[]` runs `DEFAULT_RUN`."""
    return train(parse_args(sys.argv[1:] if argv is None else argv))
