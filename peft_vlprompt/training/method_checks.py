"""Checks of the method and its adapter config that need no model or data: the method named, the `--config` it
needs and the adapter type it accepts, that the config is this method's (`--method maple` trains MaPLe-coupled
prompts), and `--adapter_kwargs` built once without a model. Run before anything is loaded."""

import inspect
import logging

from .._validation import RunRefused, check_known_keys
from .methods import (
    METHODS,
    BuildContext,
    MethodSpec,
    _coop_family,
    _fields_of,
    _import,
    _kd_objective,
    _restore_config,
    method_for_peft_type,
)
from .presets import Preset, adapter_settings

logger = logging.getLogger(__name__)


def resolve_method(args, adapter_dict: dict | None) -> MethodSpec:
    """The method of the run, after the checks that need no model or data (the name, the `--config` it needs, the
    adapter type it accepts, and that the config is this method's). Sets `args.method`."""
    name = args.method
    if name is None and adapter_dict is not None:
        name = method_for_peft_type(_type_name(adapter_dict["peft_type"]))
        if name is None:
            raise ValueError(f"no training method accepts adapter type {adapter_dict['peft_type']!r} of `config` "
                             f"{args.config}; pass --method")  # fmt: skip
    spec = METHODS.get(name or "prograd")
    if spec is None:
        raise ValueError(f"unknown `method` {name!r}; available: {', '.join(sorted(METHODS))}")
    args.method = spec.name
    if spec.make_objective is not _kd_objective:  # only the distillation objective reads them
        for name, default in (("kd_weight", None), ("kd_temperature", 1.0)):
            if getattr(args, name) != default:
                raise ValueError(f"`{name}`={getattr(args, name)!r} would be ignored: method {spec.name!r} has no "
                                 "distillation term (dpl and deep_prompt have one)")  # fmt: skip
    if adapter_dict is None:
        if spec.needs_config and not (spec.kwargs_config and args.adapter_kwargs):
            raise ValueError(
                f"method {spec.name!r} has no preset adapter: pass --config (e.g. the DPL search's "
                "found.json)" + (" or the lengths in --adapter_kwargs" if spec.kwargs_config else "")
            )
        return spec
    kind = _type_name(adapter_dict["peft_type"])
    if kind not in spec.accepts_peft_types:
        raise ValueError(f"method {spec.name!r} cannot train a {kind!r} adapter from `config` {args.config}; "
                         f"it accepts {list(spec.accepts_peft_types)}")  # fmt: skip
    check_method_config(spec, adapter_dict | args.adapter_overrides(), f"`config` {args.config}")
    return spec


def check_method_config(spec: MethodSpec, config, where: str = "the adapter config") -> None:
    """Refuse an adapter config that is not what `--method` names (the results would carry the wrong method)."""
    reason = spec.check_config(config) if spec.check_config is not None else None
    if reason:
        raise ValueError(f"{where}: {reason}")


def _type_name(value) -> str:
    return str(getattr(value, "value", value)).lower()


def allowed_adapter_settings(spec: MethodSpec, preset: Preset) -> tuple[set[str], set[str]]:
    """`(names --adapter_kwargs may set, names it may not)` for a method built from its preset."""
    cls = spec.resolved_config_class()
    fields = _fields_of(cls) if cls is not None else set()
    path = getattr(spec.build_config, "function_path", None)
    computed = {"text_lengths", "vision_lengths"}  # the preset sizes them from n_ctx/depth and the backbone
    if spec.build_config is _restore_config:  # MaPLe lengths from n_ctx/depth, like the deep-prompt presets
        return (fields - computed) | {"n_ctx", "depth"} | set(preset.adapter), computed
    if path is None:
        return fields | set(preset.adapter), set()
    params = {n for n, p in inspect.signature(_import(path)).parameters.items() if p.kind == p.KEYWORD_ONLY or
              p.kind == p.POSITIONAL_OR_KEYWORD} - {"model_or_layers"}  # fmt: skip
    return (fields - computed) | params | set(preset.adapter), computed


class _Layers(tuple):
    """A `(text, vision)` layer-count stand-in for the backbone: what the preset functions and RESTORE's size from."""

    @property
    def text_layers(self) -> int:
        return self[0]

    @property
    def vision_layers(self) -> int:
        return self[1]


def check_adapter_settings(spec: MethodSpec, adapter_dict: dict | None, args, preset: Preset) -> None:
    """Build the adapter config once without a model, so a bad field of the `--config` file or of `--adapter_kwargs`
    (unknown, wrong type, out of range, or not this method) fails before any data or model is loaded.

    Preset-built configs are sized for a 12-layer CLIP here, or deeper for a deeper user depth (the real build sizes
    them to the loaded backbone, where `check_user_depths` refuses a user depth deeper than it)."""
    from .build import config_from_dict

    overrides = args.adapter_overrides()
    if adapter_dict is not None:
        check_method_config(spec, config_from_dict(adapter_dict, overrides, f"`config` {args.config}"))
        return
    if not spec.trains or not overrides:
        return
    allowed, computed = allowed_adapter_settings(spec, preset)
    fixed = sorted(set(overrides) & computed)
    if fixed:
        raise ValueError(f"`adapter_kwargs` sets {fixed}, which the {spec.name} preset computes from its lengths and "
                         "depth: set those instead, or train the lengths as given with --method deep_prompt")  # fmt: skip
    check_known_keys(overrides, allowed, f"`adapter_kwargs` for method {spec.name!r}")
    settings = _settings(spec.name, preset, overrides, log=False)
    path = getattr(spec.build_config, "function_path", None)
    # 12 layers, or as deep as the user's depth: this check never clips a user value (the loaded model may be deeper)
    depths = [v for k, v in overrides.items() if k in ("depth", "vision_depth") and isinstance(v, int)]
    layers = _Layers((max([12, *depths]),) * 2)
    try:
        if path is not None:
            config = _import(path)(layers, **settings)
        elif spec.kwargs_config:  # deep_prompt: the lengths themselves come from --adapter_kwargs
            config = spec.resolved_config_class()(**settings)
        elif spec.build_config is _restore_config:  # the released per-dataset ratios
            ctx = BuildContext(layers, "a photo of a {}.", 2, args.dataset)
            config = _restore_config(spec.resolved_config_class(), settings, ctx)
        elif spec.build_config is _coop_family:
            ctx = BuildContext(None, "a photo of a {}.", 2, args.dataset)  # the teacher template does not matter here
            config = _coop_family(spec.resolved_config_class(), settings, ctx)
        else:
            return
    except TypeError as e:  # e.g. a setting the preset function passes itself ("got multiple values")
        raise ValueError(f"`adapter_kwargs` {overrides} for method {spec.name!r}: {e}") from None
    except ValueError as e:
        raise type(e)(f"`adapter_kwargs` {overrides} for method {spec.name!r}: {e}") from None
    check_method_config(spec, config, f"`adapter_kwargs` {overrides}")


def user_adapter_settings(spec: MethodSpec, preset: Preset, args) -> dict:
    """The settings a preset-built adapter is made from (the preset's, with the user's `--adapter_kwargs` over them
    by field group, see `presets.adapter_settings`), logging what the preset would have set where it yields."""
    source = args.sources.get("adapter_kwargs", "Python") if hasattr(args, "sources") else "Python"
    return _settings(spec.name, preset, args.adapter_overrides(), f"--adapter_kwargs ({source})")


# Deep prompts: the released MaPLe/IVLP code initialises the text context from CTX_INIT only while it fits
# (`if ctx_init and n_ctx <= 4`, the 4 words = 4 tokens of "a photo of a"), else randomly. So the init phrase of the
# preset (or of RESTORE's config default) yields to a user's longer text context instead of refusing it.
_DEEP_TEXT_LENGTH = {"ivlp": "n_ctx_text", "deep_language": "n_ctx_text", "maple": "n_ctx", "restore": "n_ctx"}
_CONFIG_DEFAULT_INIT = {"restore": "a photo of a"}  # RestoreAdapterConfig.ctx_init


def _settings(method: str, preset: Preset, overrides: dict, user_source: str = "--adapter_kwargs",
              log: bool = True) -> dict:  # fmt: skip
    """`presets.adapter_settings`, plus the deep-prompt rule above."""
    settings = adapter_settings(method, preset, overrides, user_source, log)
    key = _DEEP_TEXT_LENGTH.get(method)
    length = overrides.get(key) if key is not None else None
    phrase = settings.get("ctx_init", _CONFIG_DEFAULT_INIT.get(method))
    if "ctx_init" in overrides or not isinstance(length, int) or not isinstance(phrase, str):
        return settings
    if length > len(phrase.split()):
        settings["ctx_init"] = None
        if log:
            logger.info("%s: the preset's ctx_init %r (%d words) dropped: %s sets `%s`=%d, longer than it (the "
                        "released code then initialises randomly)", method, phrase, len(phrase.split()), user_source,
                        key, length)  # fmt: skip
    return settings


# the tower(s) whose layers a method's `depth` counts (`vision_depth` always counts the vision tower's); MaPLe and
# RESTORE's coupled vision prompts follow the text depth (clipped to the vision tower by construction)
_DEPTH_TOWERS = {"vpt": ("vision",), "deep_language": ("text",), "maple": ("text",), "restore": ("text",)}


def check_user_depths(spec: MethodSpec, args, text_layers: int, vision_layers: int) -> None:
    """A `depth`/`vision_depth` the user gave (`--adapter_kwargs`, from the command line or the config file) deeper
    than the loaded model is an error: a user value is never clipped. A preset's depth (e.g. 12 on the 2-layer toy
    CLIP) is the paper's for a full-size model and is still clipped to a shallow one by the preset function, logged."""
    overrides = args.adapter_overrides()
    source = args.sources.get("adapter_kwargs", "Python") if hasattr(args, "sources") else "Python"
    layers = {"text": text_layers, "vision": vision_layers}
    for name in ("depth", "vision_depth"):
        value = overrides.get(name)
        if not isinstance(value, int) or isinstance(value, bool):
            continue  # absent, or already refused by `check_adapter_settings`
        towers = ("vision",) if name == "vision_depth" else _DEPTH_TOWERS.get(spec.name, ("text", "vision"))
        if name == "depth" and "vision_depth" in overrides:
            towers = tuple(t for t in towers if t != "vision")
        for tower in towers:
            if value > layers[tower]:
                raise RunRefused(f"`{name}`={value} (--adapter_kwargs, {source}) is deeper than the model's {tower} "
                                 f"tower, which has {layers[tower]} layers: give a `{name}` of at most "
                                 f"{layers[tower]} for this model")  # fmt: skip
