"""Per-method hyperparameters of the papers' released configs (`docs/reference/methods.md` §1-§9).

A preset gives the schedule (epochs, lr, batch size), the adapter settings and the template table of one method for
one (protocol, shots, dataset). Every run uses SGD with momentum 0.9, weight decay 5e-4, cosine over the epochs and
one constant warm-up epoch at 1e-5 (Dassl). Command-line values override these.

Adapter settings are plain dicts: for the CoOp family they are the config's own fields; for the deep-prompt family
they are the arguments of `peft_vlprompt.tuners.deep_prompt.presets` (`n_ctx_text`, `n_ctx_vision`, `depth`, ...),
which size the per-layer lengths to the loaded backbone.
"""

import logging
import typing
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

# PromptSRC's few-shot GPA settings depend on the dataset (methods.md §5)
_PROMPTSRC_FEWSHOT_SHARP = {"stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"}
# ProGrad README: lambda 0.8 for 8/16 shots on these datasets (methods.md §6)
_PROGRAD_LOW_LAMBDA = {"oxford_flowers", "dtd", "eurosat"}


@dataclass(frozen=True)
class PresetContext:
    """What a preset may depend on."""

    protocol: str
    shots: int
    dataset: str
    template: str = "a photo of a {}."
    train_size: int | None = None  # training images (CLIP-LoRA's iteration budget -> epochs); None before loading


@dataclass(frozen=True)
class Preset:
    """The paper's settings for one method in one context.

    Args:
        num_epochs / lr / batch_size: the schedule (batch size per device).
        adapter: settings the method's config factory understands (see module docstring).
        template_table: `peft_vlprompt.data.TEMPLATES` table for zero-shot CLIP and the teacher ("coop", "prograd",
            "kgcoop").
        extra: method-level settings that are not adapter fields (e.g. GPA mean/std, loss weights).
        source: where the numbers come from.
        template: a format string the method uses for every dataset (CLIP-LoRA), else None (the table's).
    """

    num_epochs: int
    lr: float
    batch_size: int
    adapter: dict[str, Any] = field(default_factory=dict)
    template_table: str = "coop"
    extra: dict[str, Any] = field(default_factory=dict)
    source: str = ""
    template: str | None = None


def coop_epochs(shots: int, dataset: str) -> int:
    """CoOp's COOP.md rule: 1 shot -> 50 epochs, 2/4 -> 100, 8/16 (and all) -> 200; ImageNet always 50."""
    if dataset == "imagenet" or shots == 1:
        return 50
    if shots in (2, 3, 4):
        return 100
    return 200


def init_phrase(template: str) -> str:
    """ProGrad's CTX_INIT phrase: the template without its trailing ' {}.' (else 'a photo of a')."""
    for suffix in (" {}.", " {}"):
        if template.endswith(suffix) and "{}" not in template[: -len(suffix)]:
            return template[: -len(suffix)].strip()
    return "a photo of a"


def _coop(ctx: PresetContext) -> Preset:
    if ctx.protocol == "base2new":  # CoCoOp's base2new scripts train CoOp with vit_b16_ctxv1 (_ep50_ for ImageNet)
        adapter = {"ctx_init": "a photo of a"}
    else:
        adapter = {"n_ctx": 16}
    return Preset(coop_epochs(ctx.shots, ctx.dataset), 0.002, 32, adapter, source="CoOp vit_b16*.yaml, COOP.md")


def _cocoop(ctx: PresetContext) -> Preset:
    return Preset(10, 0.002, 1, {"n_ctx": 4, "ctx_init": "a photo of a"},
                  source="CoOp vit_b16_c4_ep10_batch1_ctxv1.yaml")  # fmt: skip


def _prograd(ctx: PresetContext) -> Preset:
    lam = 0.8 if ctx.shots in (8, 16) and ctx.dataset in _PROGRAD_LOW_LAMBDA else 1.0
    # the released layout (`ProGradCoOpConfig.paper_init`): the phrase counted in words, so "a type of pet, a photo
    # of a" learns 8 zeros + its first 8 tokens and keeps the last "a" frozen; `--adapter_kwargs
    # '{"ctx_init_split": "tokens"}'` learns one vector per BPE token instead
    adapter = {"n_ctx": 16, "ctx_init": init_phrase(ctx.template), "ctx_init_split": "words", "pad_ctx_init": True,
               "lambda_": lam, "temperature": 1.0}  # fmt: skip
    return Preset(coop_epochs(ctx.shots, ctx.dataset), 0.002, 32, adapter, template_table="prograd",
                  source="ProGrad configs rn50{,_ep50,_ep100}.yaml, README (lambda)")  # fmt: skip


def _kgcoop(ctx: PresetContext) -> Preset:
    return Preset(100, 0.002, 128, {"ctx_init": "a photo of a", "kg_weight": 8.0}, template_table="kgcoop",
                  source="KgCoOp vit_b16_ep100_ctxv1.yaml, scripts/run.sh (W=8)")  # fmt: skip


def _ivlp(ctx: PresetContext) -> Preset:
    return Preset(5, 0.0035, 4, {"n_ctx_text": 2, "n_ctx_vision": 2, "depth": 12, "ctx_init": "a photo of a"},
                  source="MaPLe repo IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml")  # fmt: skip


def _vpt(ctx: PresetContext) -> Preset:
    return Preset(5, 0.0025, 4, {"n_ctx_vision": 8, "depth": 12, "text_template": "a photo of a {}."},
                  source="MaPLe repo VPT/vit_b16_c2_ep5_batch4_4.yaml")  # fmt: skip


def _deep_language(ctx: PresetContext) -> Preset:
    # the config's lr/epochs are not in the reference notes: IVLP's schedule (same repo, same family) is assumed
    return Preset(5, 0.0035, 4, {"n_ctx_text": 4, "depth": 12, "ctx_init": "a photo of a"},
                  source="MaPLe repo IVLP/..._4ctx_language_only.yaml (schedule assumed = IVLP)")  # fmt: skip


def _maple(ctx: PresetContext) -> Preset:
    if ctx.protocol in ("cross_dataset", "domain_generalization"):
        return Preset(2, 0.0026, 4, {"n_ctx": 2, "depth": 3, "ctx_init": "a photo of a"},
                      source="MaPLe vit_b16_c2_ep5_batch4_2ctx_cross_datasets.yaml")  # fmt: skip
    return Preset(5, 0.0035, 4, {"n_ctx": 2, "depth": 9, "ctx_init": "a photo of a"},
                  source="MaPLe vit_b16_c2_ep5_batch4_2ctx.yaml")  # fmt: skip


def _promptsrc(ctx: PresetContext) -> Preset:
    weights = {"text_loss_weight": 25.0, "image_loss_weight": 10.0}
    if ctx.protocol in ("cross_dataset", "domain_generalization"):
        epochs, depth, gpa = 20, 3, (6.0, 10.0)
    elif ctx.protocol == "few_shot":
        epochs, depth = 50, 9
        gpa = (45.0, 5.0) if ctx.dataset in _PROMPTSRC_FEWSHOT_SHARP else (30.0, 30.0)
    else:
        epochs, depth, gpa = 20, 9, (15.0, 1.0)
    adapter = {"n_ctx_text": 4, "n_ctx_vision": 4, "depth": depth, "gpa_mean": gpa[0], "gpa_std": gpa[1], **weights}
    return Preset(epochs, 0.0025, 4, adapter,
                  source="PromptSRC configs vit_b16_c2_ep20_batch4_4+4ctx*.yaml")  # fmt: skip


def _restore(ctx: PresetContext) -> Preset:
    # the per-dataset ratios and loss weight (run_maple_fsa.sh) come from `tuners.restore.restore_preset`
    epochs = 2 if ctx.protocol in ("cross_dataset", "domain_generalization") else 10
    return Preset(epochs, 0.0035, 4, {"n_ctx": 2, "depth": 9},
                  source="RESTORE MaPLe_FSA/vit_b16_c2_ep5_batch4_2ctx.yaml (MAX_EPOCH 10), run_maple_fsa.sh")  # fmt: skip


def _dpl(ctx: PresetContext) -> Preset:
    return Preset(40, 0.0035, 4, {}, source="DPL TrainerSubnet/fewshot.yaml (adapter from the search's found.json)")


def _deep_prompt(ctx: PresetContext) -> Preset:
    return Preset(5, 0.0035, 4, {}, source="IVLP schedule; the adapter comes from --config / --adapter_kwargs")


def _clip_lora(ctx: PresetContext) -> Preset:
    """AdamW + per-iteration cosine for 500 x shots iterations (the loop stops there); the epochs cover them at batch
    32 on one process, dropping the last incomplete batch as the loop does."""
    from ..baselines.clip_lora import CLIP_LORA_RECIPE as R

    iterations = R["iterations_per_shot"] * ctx.shots if ctx.shots > 0 else None
    epochs = 1
    if iterations is not None and ctx.train_size:
        epochs = -(-iterations // max(1, ctx.train_size // R["batch_size"]))
    extra = {"optimizer": "adamw", "weight_decay": R["weight_decay"], "betas": R["betas"], "eta_min": R["eta_min"],
             "iterations": iterations}  # fmt: skip
    return Preset(epochs, R["lr"], R["batch_size"], {}, extra=extra, template=R["template"],
                  source="CLIP-LoRA run_utils.py defaults (Zanella & Ben Ayed, CVPRW 2024)")  # fmt: skip


def _linear_probe(ctx: PresetContext) -> Preset:
    return Preset(0, 0.0, 1, {}, source="CLIP paper A.3: logistic regression, L-BFGS, L2 chosen on validation")


def _zeroshot(ctx: PresetContext) -> Preset:
    return Preset(0, 0.0, 1, {}, source="zero-shot CLIP with CoOp's CUSTOM_TEMPLATES (zsclip.py)")


PRESETS = {
    "coop": _coop,
    "cocoop": _cocoop,
    "prograd": _prograd,
    "kgcoop": _kgcoop,
    "ivlp": _ivlp,
    "vpt": _vpt,
    "deep_language": _deep_language,
    "maple": _maple,
    "promptsrc": _promptsrc,
    "restore": _restore,
    "dpl": _dpl,
    "deep_prompt": _deep_prompt,
    "zeroshot": _zeroshot,
    "clip_lora": _clip_lora,
    "linear_probe": _linear_probe,
    "linear_probe_text": _linear_probe,
}


# Adapter fields that describe one thing together. A user value (--adapter_kwargs, from the command line or the
# --config file) for any field of a group drops the preset's values for the whole group: a preset value is not a
# user value, so it never conflicts with one (the coop preset's ctx_init must not turn `n_ctx: 8` into an error).
# The CoOp family's context: its length, initialisation, how the words are counted and placed, and CSC's init.
ADAPTER_FIELD_GROUPS: tuple[frozenset[str], ...] = (
    frozenset({"n_ctx", "ctx_init", "ctx_init_split", "pad_ctx_init", "class_specific_init"}),
)
_GROUPED_METHODS = {"coop", "cocoop", "prograd", "kgcoop"}


def adapter_settings(method: str, preset: Preset, overrides: dict, user_source: str = "--adapter_kwargs",
                     log: bool = True) -> dict:  # fmt: skip
    """The adapter settings of a run: the preset's, minus every field group the user touched, then the user's.

    `user_source` names where `overrides` came from in the log line that says what the preset would have set."""
    settings = dict(preset.adapter)
    if method in _GROUPED_METHODS:
        for group in ADAPTER_FIELD_GROUPS:
            touched = sorted(group & set(overrides))
            dropped = {k: settings.pop(k) for k in sorted(group & set(settings))}
            if not touched:
                settings.update(dropped)
            elif dropped and log:
                logger.info("%s preset's %s dropped: %s sets %s of the same group %s (a preset value yields to "
                            "a user value)", method, dropped, user_source, touched, sorted(group))  # fmt: skip
    return settings | overrides


def get_preset(method: str, ctx: PresetContext) -> Preset:
    """The paper's settings of `method` for `ctx`."""
    if method not in PRESETS:
        raise ValueError(f"no preset for method {method!r}; known: {sorted(PRESETS)}")
    return PRESETS[method](ctx)


def apply_preset(args, method: str, preset: Preset, trains: bool = True) -> None:
    """Fill the schedule values that no source set (num_epochs / lr / batch_size) from `preset`, validated like any
    other value, and log which preset applies, what it sets and what the command line or config file kept."""
    from .._validation import check_value
    from .args import PRESET, TrainArguments

    if not trains:
        logger.info("%s: evaluation only (%s)", method, preset.source)
        return
    hints = typing.get_type_hints(TrainArguments)
    filled, kept = [], []
    for key in ("num_epochs", "lr", "batch_size"):
        value = getattr(args, key)
        if value is None:
            value = getattr(preset, key)
            check_value(key, value, hints[key], dict(TrainArguments.__dataclass_fields__[key].metadata))
            setattr(args, key, value)
            args.sources[key] = PRESET
            filled.append(f"{key}={value}")
        else:
            kept.append(f"{key}={value} ({args.sources.get(key, 'set in Python')})")
    logger.info("%s preset (%s) sets %s%s; adapter settings %s", method, preset.source or "no source",
                ", ".join(filled) or "nothing", f"; kept: {', '.join(kept)}" if kept else "",
                preset.adapter or "none")  # fmt: skip
