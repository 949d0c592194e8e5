"""Method registry of the training loop: method name -> (adapter config factory, objective, optimizer add-ons).

Only methods whose config class can be imported are available; the others are listed as pending in the error for
an unknown or unavailable method. Config classes are imported lazily, so the loop works with whatever methods the
installed package ships.
"""

import importlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .presets import Preset

if TYPE_CHECKING:  # the registry itself stays light: the command line checks method names before torch is imported
    from ..backbones import Backbone
    from .objectives import Objective

logger = logging.getLogger(__name__)


def _import(path: str):
    """`"package.module:Name"` -> the object, or None when it cannot be imported."""
    module_name, _, attr = path.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, attr, None)


@dataclass
class BuildContext:
    """What a config factory may use besides the preset."""

    backbone: "Backbone"
    template: str
    num_classes: int
    dataset: str


@dataclass(frozen=True)
class MethodSpec:
    """How the loop trains one method.

    Args:
        name: the `--method` value.
        config_class: `"module:Class"` of the adapter config (None: no adapter, evaluation only).
        build_config: `(config_class, preset.adapter | overrides, BuildContext) -> config`.
        make_objective: `(config, preset, args) -> Objective`.
        uses_prograd: wrap the optimizer in `peft_vlprompt.optim.ProGrad` with the config's lambda.
        accepts_peft_types: peft types a `--config` file may have for this method.
        fallback_config_class: used while `config_class` is not importable (ProGrad on a plain CoOp adapter).
        needs_config: the method has no preset adapter: `--config` (or, with `kwargs_config`, `--adapter_kwargs`)
            must give it, checked before anything is loaded.
        check_config: `(config or config dict) -> reason or None`: why an adapter accepted by peft type is still
            not this method (e.g. `--method maple` with uncoupled prompts); None when it is.
        optimizer: "sgd" (the Dassl recipe: SGD, warm-up epoch, per-epoch cosine), "adamw" (CLIP-LoRA: AdamW and a
            per-iteration cosine to the preset's `eta_min` over its `iterations`) or "closed_form" (linear probes:
            no adapter, L-BFGS on frozen features, `peft_vlprompt.baselines.probe_run`).
    """

    name: str
    config_class: str | None
    build_config: Callable[..., Any] | None = None
    make_objective: Callable[..., "Objective"] = lambda config, preset, args: _objectives().Objective()
    uses_prograd: bool = False
    accepts_peft_types: tuple[str, ...] = ()
    fallback_config_class: str | None = None
    needs_config: bool = False
    kwargs_config: bool = False
    check_config: Callable[[Any], str | None] | None = None
    optimizer: str = "sgd"

    def resolved_config_class(self):
        for path in (self.config_class, self.fallback_config_class):
            if path is not None:
                cls = _import(path)
                if cls is not None:
                    return cls
        return None

    @property
    def available(self) -> bool:
        return self.config_class is None or self.resolved_config_class() is not None

    @property
    def trains(self) -> bool:
        return self.config_class is not None


def _objectives():
    from . import objectives

    return objectives


def _setting(config, preset: Preset, name: str, default):
    """A method setting: the config's field when it has one, else the preset's, else `default`."""
    if hasattr(config, name):
        return getattr(config, name)
    return preset.adapter.get(name, preset.extra.get(name, default))


def _fields_of(cls) -> set[str]:
    return set(getattr(cls, "__dataclass_fields__", {}))


def _coop_family(cls, settings: dict, ctx: BuildContext):
    """Build a CoOp-family config, dropping preset settings the class does not have (e.g. ProGrad's lambda on a
    plain CoOp fallback) and filling `teacher_template`/`n_classes` where the class has them."""
    fields = _fields_of(cls)
    kwargs = {k: v for k, v in settings.items() if k in fields}
    dropped = sorted(set(settings) - fields)
    if dropped:
        logger.info("%s has no field(s) %s; they stay loop settings", cls.__name__, dropped)
    if "teacher_template" in fields and "teacher_template" not in kwargs:
        kwargs["teacher_template"] = ctx.template
    if kwargs.get("class_specific") and "n_classes" in fields and kwargs.get("n_classes") is None:
        kwargs["n_classes"] = ctx.num_classes
    return cls(**kwargs)


def _prograd_objective(config, preset, args):
    return _objectives().ProGradObjective(
        temperature=float(_setting(config, preset, "temperature", 1.0)),
        teacher_template=getattr(config, "teacher_template", None),
    )


def _kgcoop_objective(config, preset, args):
    return _objectives().KgCoOpObjective(
        weight=float(_setting(config, preset, "kg_weight", 8.0)),
        teacher_template=getattr(config, "teacher_template", None),
    )


def _promptsrc_objective(config, preset, args):
    return _objectives().PromptSRCObjective(
        text_weight=float(_setting(config, preset, "text_loss_weight", 25.0)),
        image_weight=float(_setting(config, preset, "image_loss_weight", 10.0)),
    )


def _kd_objective(config, preset, args):
    weight = args.kd_weight if args.kd_weight is not None else float(preset.extra.get("kd_weight", 0.0))
    return _objectives().DistillationObjective(weight=weight, temperature=args.kd_temperature)


def _sized_preset(function_path: str):
    """A factory calling a `tuners.deep_prompt.presets` function, which sizes per-layer lengths to the backbone."""

    def build(cls, settings: dict, ctx: BuildContext):
        return _import(function_path)(ctx.backbone, **settings)

    build.function_path = function_path
    return build


def _from_config_file(method: str):
    def build(cls, settings: dict, ctx: BuildContext):
        if method == "deep_prompt" and settings:
            return cls(**settings)
        raise ValueError(
            f"method {method!r} has no preset adapter: pass --config (e.g. the DPL search's found.json)"
            + (" or the lengths in --adapter_kwargs" if method == "deep_prompt" else "")
        )

    return build


def _restore_config(cls, settings: dict, ctx: BuildContext):
    """`restore_preset` (per-dataset ratios of the released scripts); other datasets keep the config's defaults."""
    from ..tuners.deep_prompt.presets import depth_lengths
    from ..tuners.restore.config import RESTORE_DATASET_SETTINGS, dataset_key, restore_preset

    if dataset_key(ctx.dataset) in RESTORE_DATASET_SETTINGS:
        return restore_preset(ctx.dataset, ctx.backbone, **settings)
    settings = dict(settings)
    n_ctx, depth = settings.pop("n_ctx", 2), settings.pop("depth", 9)
    logger.info("RESTORE has no released ratios for %r: using the config's defaults", ctx.dataset)
    text = depth_lengths(n_ctx, depth, ctx.backbone.text_layers)
    vision = depth_lengths(n_ctx, min(depth, ctx.backbone.text_layers), ctx.backbone.vision_layers)
    return cls(text_lengths=text, vision_lengths=vision, **settings)


def _restore_objective(config, preset, args):
    return _objectives().RestoreObjective(definition=config.fs_definition, weight=float(config.fs_weight))


def _deep_kind(config) -> str:
    """Which deep-prompt method a `DeepPromptConfig` (or its dict) is: its mode, coupling and prompted towers."""
    get = config.get if isinstance(config, dict) else (lambda key, default=None: getattr(config, key, default))
    if (get("mode") or "replace") == "prefix":
        return "dpl"
    if (get("coupling") or "none") == "maple":
        return "maple"
    text, vision = any(get("text_lengths") or ()), any(get("vision_lengths") or ())
    return {(True, True): "ivlp", (False, True): "vpt", (True, False): "deep_language"}.get((text, vision), "?")


_DEEP_KINDS = {
    "ivlp": "uncoupled text and vision prompts (mode 'replace', coupling 'none')",
    "vpt": "vision prompts only (mode 'replace', no text prompts)",
    "deep_language": "text prompts only (mode 'replace', no vision prompts)",
    "maple": "MaPLe-coupled prompts (coupling 'maple')",
    "dpl": "prefix prompts (mode 'prefix')",
}


def _deep_prompt_method(method: str, preset_function: str) -> MethodSpec:
    """A `DeepPromptConfig` method built by its `tuners.deep_prompt.presets` function; a `--config` adapter must be
    of the same kind (IVLP, VPT-deep, deep language or MaPLe)."""
    return MethodSpec(
        method,
        _DEEP,
        _sized_preset(f"{_DEEP_PRESETS}:{preset_function}"),
        accepts_peft_types=("deep_prompt",),
        check_config=_is_deep_kind(method),
    )


def _is_deep_kind(method: str):
    def check(config) -> str | None:
        kind = _deep_kind(config)
        if kind == method:
            return None
        other = f"; it is a {kind} config (--method {kind}" if kind in _DEEP_KINDS else " (use"
        return (
            f"--method {method} trains {_DEEP_KINDS[method]}, but the adapter config does not{other} or "
            "--method deep_prompt trains it as given)"
        )

    return check


_COOP = "peft_vlprompt.tuners.coop:CoOpConfig"
_DEEP = "peft_vlprompt.tuners.deep_prompt:DeepPromptConfig"
_DEEP_PRESETS = "peft_vlprompt.tuners.deep_prompt.presets"

METHODS: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in [
        MethodSpec("zeroshot", None),
        MethodSpec("linear_probe", None, optimizer="closed_form"),
        MethodSpec("linear_probe_text", None, optimizer="closed_form"),
        MethodSpec("coop", _COOP, _coop_family, accepts_peft_types=("coop",)),
        MethodSpec(
            "prograd",
            "peft_vlprompt.tuners.prograd_coop:ProGradCoOpConfig",
            _coop_family,
            _prograd_objective,
            uses_prograd=True,
            accepts_peft_types=("prograd_coop", "coop"),
            fallback_config_class=_COOP,
        ),
        MethodSpec(
            "kgcoop",
            "peft_vlprompt.tuners.kgcoop:KgCoOpConfig",
            _coop_family,
            _kgcoop_objective,
            accepts_peft_types=("kgcoop",),
        ),
        MethodSpec("cocoop", "peft_vlprompt.tuners.cocoop:CoCoOpConfig", _coop_family, accepts_peft_types=("cocoop",)),
        _deep_prompt_method("ivlp", "ivlp_preset"),
        _deep_prompt_method("vpt", "vpt_deep_preset"),
        _deep_prompt_method("deep_language", "deep_language_preset"),
        _deep_prompt_method("maple", "maple_preset"),
        MethodSpec(
            "promptsrc",
            "peft_vlprompt.tuners.deep_prompt:PromptSRCConfig",
            _sized_preset(f"{_DEEP_PRESETS}:promptsrc_preset"),
            _promptsrc_objective,
            accepts_peft_types=("promptsrc",),
        ),
        MethodSpec(
            "restore",
            "peft_vlprompt.tuners.restore:RestoreAdapterConfig",
            _restore_config,
            _restore_objective,
            accepts_peft_types=("restore",),
        ),
        MethodSpec(
            "clip_lora",
            "peft:LoraConfig",
            _sized_preset("peft_vlprompt.baselines.clip_lora:clip_lora_config"),
            accepts_peft_types=("lora",),
            optimizer="adamw",
        ),
        MethodSpec(
            "dpl",
            _DEEP,
            _from_config_file("dpl"),
            _kd_objective,
            accepts_peft_types=("deep_prompt",),
            needs_config=True,
            check_config=_is_deep_kind("dpl"),
        ),  # fmt: skip
        MethodSpec(
            "deep_prompt",
            _DEEP,
            _from_config_file("deep_prompt"),
            _kd_objective,
            accepts_peft_types=("deep_prompt",),
            needs_config=True,
            kwargs_config=True,
        ),  # fmt: skip
    ]
}


def register_training_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method to the loop's registry (`replace=True` to override an existing one)."""
    if spec.name in METHODS and not replace:
        raise ValueError(f"training method {spec.name!r} is already registered")
    METHODS[spec.name] = spec
    return spec


def available_methods() -> list[str]:
    return sorted(name for name, spec in METHODS.items() if spec.available)


def get_method(name: str) -> MethodSpec:
    """The spec of `name`; a clear error for an unknown method or one whose config class is not installed."""
    spec = METHODS.get(name)
    if spec is None:
        raise ValueError(f"unknown `method` {name!r}; available: {', '.join(available_methods())}")
    if not spec.available:
        raise ValueError(
            f"`method` {name!r} needs {spec.config_class}, which this installation does not provide; "
            f"available: {', '.join(available_methods())}"
        )
    return spec


def method_for_peft_type(peft_type: str) -> str | None:
    """The method for a `--config` file of `peft_type` without `--method`: the one named like the type, else the
    first available method accepting it."""
    exact = METHODS.get(peft_type)
    if exact is not None and exact.available and peft_type in exact.accepts_peft_types:
        return peft_type
    for name, spec in METHODS.items():
        if spec.available and peft_type in spec.accepts_peft_types:
            return name
    return None
