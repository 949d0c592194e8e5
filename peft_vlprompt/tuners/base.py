"""Shared pieces of every peft_vlprompt method: the config base, the tuner-layer base and the tuner base.

A method is a `VLPromptConfig` subclass (what to learn), `VLPromptLayer` subclasses wrapping CLIP submodules (where
the learnable state lives) and a `VLPromptTuner` subclass (which submodules to wrap). peft's generic machinery then
gives `get_peft_model`, save/load, multi-adapter, `disable_adapter` and `unload` for free.
"""

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from peft.utils import SAFETENSORS_WEIGHTS_NAME
from safetensors import safe_open
from torch import nn

from .._peft_compat import ensure_peft_type
from .._validation import check_fields, check_known_keys
from ..backbones import Backbone, backbone_for
from ..finite import check_finite
from ..model_refs import portable_model_reference, resolve_model_reference
from .tokens import class_text

DEFAULT_TEMPLATE = "a photo of a {}."


@dataclass
class VLPromptConfig(PeftConfig):
    """Base of every peft_vlprompt config (not used directly).

    Subclasses set `method_name` and implement `target_module_names` (and `prompt_texts` when they learn text
    context). `task_type` stays `None` so peft builds a plain `PeftModel`, whose forward is `CLIPModel.forward`.
    """

    target_modules: list[str] | None = field(
        default=None, metadata={"help": "Filled in from the backbone when the adapter is created; leave unset."}
    )
    modules_to_save: list[str] | None = field(
        default=None, metadata={"help": "Extra base-model modules to train and save in full (peft's mechanism)."}
    )

    method_name = "vlprompt"  # class attribute, overridden by each method
    # validation rules of fields several methods declare (added to each field's own `metadata`)
    shared_field_rules = {
        "n_classes": {"min": 1},
        "placeholder_token_id": {"min": 0},
        "ctx_init_token_ids": {"item_min": 0, "items": "token ids"},
    }

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = ensure_peft_type(self.method_name)
        # a portable name (`peft-vlprompt/toy-clip`) loads the installed copy; `to_dict` writes the name back
        self.base_model_name_or_path = resolve_model_reference(self.base_model_name_or_path)
        # every field of every method, whatever the source (Python, a JSON file, --adapter_kwargs), is checked
        # against its annotation and `metadata` (min/max/gt/choices) before the subclass checks its own rules
        check_fields(self, skip=PeftConfig.__dataclass_fields__, rules=self.shared_field_rules)

    @classmethod
    def from_peft_type(cls, **kwargs):
        # peft drops unknown keys with a warning (or reports a missing `peft_type`): a typo'd field would silently
        # train the default instead. Ours fail, naming the field and the closest real ones.
        from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING

        config_cls = PEFT_TYPE_TO_CONFIG_MAPPING.get(kwargs["peft_type"]) if "peft_type" in kwargs else cls
        if not (isinstance(config_cls, type) and issubclass(config_cls, VLPromptConfig)):
            return super().from_peft_type(**kwargs)
        check_known_keys(kwargs, config_cls.__dataclass_fields__, config_cls.__name__)
        return config_cls(**kwargs)

    def to_dict(self) -> dict:
        out = super().to_dict()
        out["base_model_name_or_path"] = portable_model_reference(out.get("base_model_name_or_path"))
        return out

    # -- loading: errors name the file ----------------------------------------------------------------------------
    @classmethod
    def from_json_file(cls, path_json_file: str, **kwargs):
        try:
            data = super().from_json_file(path_json_file, **kwargs)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"adapter config {path_json_file} is not valid JSON: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"adapter config {path_json_file} must hold a JSON object, got {type(data).__name__}")
        return data

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs):
        """peft's loader, plus: errors name the file, and a local weights file is checked to be readable first.

        The config remembers where it came from (`_weights_source`), so the load hook can name the weights file.
        """
        source = str(pretrained_model_name_or_path)
        folder = os.path.join(source, subfolder) if subfolder else source
        try:
            config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        except (TypeError, ValueError) as e:
            if source in str(e):
                raise
            try:  # keep the type (callers catch it) unless its constructor wants more than a message
                named = type(e)(f"adapter config in {folder}: {e}")
            except Exception:
                named = ValueError(f"adapter config in {folder}: {e}")
            raise named from e
        weights = os.path.join(folder, SAFETENSORS_WEIGHTS_NAME)
        if os.path.isdir(folder):
            if not os.path.isfile(weights):  # else peft takes the folder for a Hub id and says the id is invalid
                raise ValueError(f"adapter folder {folder} has no {SAFETENSORS_WEIGHTS_NAME} (save the adapter with "
                                 "`save_pretrained`; weights are read from safetensors only)")  # fmt: skip
            check_weights_file(weights)
            config._weights_source = f"adapter file {weights}"
        else:
            config._weights_source = f"adapter file {SAFETENSORS_WEIGHTS_NAME} of {folder}"
        return config

    # -- hooks used by the tuner and the classifier -------------------------------------------------------------
    def target_module_names(self, backbone: Backbone) -> list[str]:
        raise NotImplementedError

    def validate_for_backbone(self, backbone: Backbone) -> None:
        """Raise a clear error if this config cannot be applied to `backbone`."""

    def prompt_texts(self, classnames: list[str], template: str) -> list[str]:
        """Text fed to the text tower for each class (the hand-crafted template unless the method learns context)."""
        return [template.format(class_text(name)) for name in classnames]

    @property
    def placeholder_count(self) -> int:
        """How many placeholder tokens each prompt must contain (0 when the text is not prompted)."""
        return 0


class VLPromptLayer(nn.Module, BaseTunerLayer):
    """Base of every wrapper module. Subclasses set `adapter_layer_names` and implement `update_layer`/`forward`."""

    adapter_layer_names: tuple[str, ...] = ()
    other_param_names: tuple[str, ...] = ()

    def __init__(self, base_layer: nn.Module, **kwargs) -> None:
        super().__init__()
        self.base_layer = base_layer
        self._disable_adapters = False
        self.merged_adapters = []
        self._active_adapter = "default"
        self.kwargs = kwargs

    def update_layer(self, adapter_name: str, config: VLPromptConfig, backbone: Backbone, key: str) -> None:
        raise NotImplementedError

    def enabled_adapters(self, store: nn.Module | dict) -> list[str]:
        """Active adapters that have state in `store` (empty when adapters are disabled)."""
        if self.disable_adapters:
            return []
        return [name for name in self.active_adapters if name in store]

    def merge(self, *args, **kwargs) -> None:
        raise NotImplementedError(f"{type(self).__name__} adds prompts, which cannot be merged into base weights")

    def unmerge(self) -> None:
        return None

    def _reference_weight(self) -> torch.Tensor:
        return next(self.base_layer.parameters())


class VLPromptTuner(BaseTuner):
    """Base of every method's tuner: derives targets from the config and the backbone, wraps them."""

    prefix: str = "vlp_"
    tuner_layer_cls = VLPromptLayer
    target_module_mapping: dict = {}
    # tuners of one family build the same layers and tensors from their configs and differ only in the objective
    # (CoOp, KgCoOp, ProGrad-CoOp), so their adapters can sit on one model (`peft_vlprompt.adapters`); None: alone
    state_family: str | None = None

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # Targets come from the backbone, so resolve them here; `PeftModel.add_adapter` calls this directly (it skips
        # the pre/post injection hooks), so all per-adapter setup lives here.
        backbone = backbone_for(model)
        config = self.peft_config[adapter_name]
        config.validate_for_backbone(backbone)
        config.target_modules = config.target_module_names(backbone)
        self._backbone = backbone
        # peft rewrites lists of >= 20 targets into minimal suffixes (e.g. {"self_attn"}) before matching, so match
        # against the exact module paths resolved here instead of `config.target_modules`
        self._resolved_targets = getattr(self, "_resolved_targets", {})
        self._resolved_targets[id(config)] = set(config.target_modules)
        super().inject_adapter(model, adapter_name, *args, **kwargs)
        self._link_layers(model, adapter_name)

    def _link_layers(self, model: nn.Module, adapter_name: str) -> None:
        """Cross-layer references (e.g. MaPLe coupling); none by default."""

    def _check_target_module_exists(self, peft_config: VLPromptConfig, key: str) -> bool:
        resolved = getattr(self, "_resolved_targets", {}).get(id(peft_config))
        return key in (resolved if resolved is not None else set(peft_config.target_modules or ()))

    def _create_and_replace(self, peft_config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, VLPromptLayer):
            target.update_layer(adapter_name, peft_config, self._backbone, current_key)
            return
        wrapper_cls = self.wrapper_for(peft_config, current_key)
        new_module = wrapper_cls(target)
        new_module.update_layer(adapter_name, peft_config, self._backbone, current_key)
        self._replace_module(parent, target_name, new_module, target)

    def wrapper_for(self, config: VLPromptConfig, key: str) -> type[VLPromptLayer]:
        raise NotImplementedError

    def _replace_module(self, parent, child_name, new_module, child) -> None:
        # peft's version assumes `.weight` on the module `unload()` puts back (CLIP layers have none) and moves
        # adapter state to the base weight's device, which `update_layer` already creates it on.
        setattr(parent, child_name, new_module)

    def _check_merge_allowed(self):
        raise ValueError(f"{type(self).__name__} learns prompts, which cannot be merged into the base weights")

    @classmethod
    def _get_adapter_state_dict(cls, model, config, adapter_name, state_dict, unwanted_adapter_names):
        # every save (save_pretrained, checkpoints, hub push) goes through here: nothing non-finite leaves the model
        out = super()._get_adapter_state_dict(model, config, adapter_name, state_dict, unwanted_adapter_names)
        check_finite(
            ((_short_key(k, adapter_name), v) for k, v in out.items()),
            f"refusing to save adapter {adapter_name!r}",
            "nothing non-finite is saved or published; retrain (e.g. with a lower learning rate)",
        )
        return out

    @classmethod
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        # peft loads with strict=False and ends in torch's long `size mismatch` RuntimeError: check first that the
        # file holds every tensor of this adapter and nothing else, with the right shapes and finite values.
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_fits(model, remapped, config, adapter_name)
        check_adapter_complete(model, remapped, config, adapter_name)
        check_finite(
            ((_short_key(k, adapter_name), v) for k, v in remapped.items()),
            f"{_source(config)} holds non-finite values",
            "the file is corrupt or was saved from a diverged run",
        )
        return remapped


def _short_key(key: str, adapter_name: str) -> str:
    return key.removeprefix("base_model.model.").removesuffix("." + adapter_name).replace(f".{adapter_name}.", ".")


def _source(config: PeftConfig) -> str:
    return getattr(config, "_weights_source", None) or "the adapter state dict"


def check_weights_file(path: str | os.PathLike) -> None:
    """Raise a `ValueError` naming `path` if it exists but is not a readable safetensors file (truncated, random)."""
    if not os.path.isfile(path):
        return
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                f.get_slice(key).get_shape()
    except Exception as e:  # safetensors raises its own error types, none naming the file
        raise ValueError(
            f"adapter file {path} is not a valid safetensors file ({type(e).__name__}: {e}); it is truncated or "
            "corrupt: save or download it again"
        ) from e


def adapter_model_keys(model: nn.Module, adapter_name: str) -> set[str]:
    """State-dict keys of `model` that hold adapter `adapter_name`'s tensors in our layers (what a file must supply)."""
    keys = set()
    for module_name, module in model.named_modules():
        if not isinstance(module, VLPromptLayer):
            continue
        for attr in module.adapter_layer_names + module.other_param_names:
            store = getattr(module, attr, None)
            if not isinstance(store, nn.Module) or not hasattr(store, "keys") or adapter_name not in store.keys():
                continue
            entry = store[adapter_name]
            base = f"{module_name}.{attr}.{adapter_name}" if module_name else f"{attr}.{adapter_name}"
            keys |= {f"{base}.{k}" for k in entry.state_dict()} if isinstance(entry, nn.Module) else {base}
    return keys & set(model.state_dict())  # non-persistent buffers are rebuilt, never saved


def check_adapter_complete(model: nn.Module, state_dict: dict, config: PeftConfig, adapter_name: str) -> None:
    """Raise a `ValueError` naming the source and the keys if tensors of the adapter are missing or unexpected."""
    expected = adapter_model_keys(model, adapter_name)
    current = model.state_dict()
    missing = sorted(expected - set(state_dict))
    unexpected = sorted(k for k in state_dict if k not in expected and k not in current)
    if not missing and not unexpected:
        return
    parts = []
    for what, keys in (("misses", missing), ("has unexpected", unexpected)):
        if keys:
            shown = ", ".join(f"`{_short_key(k, adapter_name)}`" for k in keys[:5])
            parts.append(f"{what} {len(keys)} tensor(s): {shown}" + (" ..." if len(keys) > 5 else ""))
    method = getattr(config.peft_type, "value", config.peft_type).lower()
    raise ValueError(
        f"{_source(config)} does not hold adapter {adapter_name!r} ({method}): it {'; it '.join(parts)}. "
        f"Expected {len(expected)} tensor(s), found {len(state_dict)}: was it saved from another method or config?"
    )


def check_adapter_fits(model: nn.Module, state_dict: dict, config: PeftConfig, adapter_name: str) -> None:
    """Raise a `ValueError` naming both shapes if saved adapter tensors do not fit the tensors of `model`."""
    current = model.state_dict()
    mismatched = [
        (key, tuple(value.shape), tuple(current[key].shape))
        for key, value in state_dict.items()
        if key in current and tuple(value.shape) != tuple(current[key].shape)
    ]
    if not mismatched:
        return
    details = "; ".join(
        f"`{_short_key(key, adapter_name)}` has shape {saved} in the saved adapter but {expected} in this model"
        for key, saved, expected in mismatched
    )
    b = backbone_for(model)
    method = getattr(config.peft_type, "value", config.peft_type).lower()
    raise ValueError(
        f"adapter {adapter_name!r} ({method}) does not fit this base model: {details} ({_source(config)}). This "
        f"model has text width {b.text_width} x {b.text_layers} layers and vision width {b.vision_width} x "
        f"{b.vision_layers} layers; the adapter was trained on "
        f"`{config.base_model_name_or_path or 'an unnamed CLIP model'}`: load it into that checkpoint"
    )


def prompt_layers(model: nn.Module) -> Iterator[VLPromptLayer]:
    for module in model.modules():
        if isinstance(module, VLPromptLayer):
            yield module


def enabled_configs(model: nn.Module) -> list[tuple[str, VLPromptConfig]]:
    """(adapter name, config) of our adapters that are active and enabled in `model` (empty for plain CLIP)."""
    configs = getattr(model, "peft_config", None) or {}
    names: list[str] = []
    for layer in prompt_layers(model):
        for store_name in layer.adapter_layer_names:
            for name in layer.enabled_adapters(getattr(layer, store_name)):
                if name not in names:
                    names.append(name)
    return [(name, configs[name]) for name in names if isinstance(configs.get(name), VLPromptConfig)]


@contextlib.contextmanager
def text_rows_for_classes(
    model: nn.Module, class_index: torch.Tensor | None, text_start: int | None = None
) -> Iterator[None]:
    """Tell the text layers about the next text batch (for chunked encoding): which class each row belongs to, and,
    if given, how many special tokens its prompts start with (`text_start`, kept after the batch: the caller's
    tokenizer made the prompts, whatever the family's tokenizer does). One pass over the model's prompt layers."""
    layers = []
    for layer in prompt_layers(model):
        if text_start is not None and getattr(layer, "text_start", text_start) != text_start:
            layer.text_start = text_start
        if hasattr(layer, "row_classes"):
            layers.append(layer)
    previous = [layer.row_classes for layer in layers]
    for layer in layers:
        layer.row_classes = class_index
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.row_classes = value
