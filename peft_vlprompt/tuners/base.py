"""Shared pieces of every peft_vlprompt method: the config base, the tuner-layer base and the tuner base.

A method is a `VLPromptConfig` subclass (what to learn), `VLPromptLayer` subclasses wrapping CLIP submodules (where
the learnable state lives) and a `VLPromptTuner` subclass (which submodules to wrap). peft's generic machinery then
gives `get_peft_model`, save/load, multi-adapter, `disable_adapter` and `unload` for free.
"""

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from peft.config import PeftConfig
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer
from torch import nn

from .._peft_compat import ensure_peft_type
from .._validation import check_fields, check_known_keys
from ..backbones import ClipBackbone
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

    # -- hooks used by the tuner and the classifier -------------------------------------------------------------
    def target_module_names(self, backbone: ClipBackbone) -> list[str]:
        raise NotImplementedError

    def validate_for_backbone(self, backbone: ClipBackbone) -> None:
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

    def update_layer(self, adapter_name: str, config: VLPromptConfig, backbone: ClipBackbone, key: str) -> None:
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

    def inject_adapter(self, model: nn.Module, adapter_name: str, *args, **kwargs) -> None:
        # Targets come from the backbone, so resolve them here; `PeftModel.add_adapter` calls this directly (it skips
        # the pre/post injection hooks), so all per-adapter setup lives here.
        backbone = ClipBackbone.from_model(model)
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
    def _remap_adapter_state_dict_for_load(cls, model, config, adapter_name, state_dict):
        # peft's load path ends in torch's long `size mismatch` RuntimeError when an adapter saved on one CLIP
        # architecture is loaded into another; fail first with a message naming both shapes and the base model.
        remapped = super()._remap_adapter_state_dict_for_load(model, config, adapter_name, state_dict)
        check_adapter_fits(model, remapped, config, adapter_name)
        return remapped


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
        f"`{key.removeprefix('base_model.model.').removesuffix('.' + adapter_name)}` has shape {saved} in the saved "
        f"adapter but {expected} in this model"
        for key, saved, expected in mismatched
    )
    b = ClipBackbone.from_model(model)
    method = getattr(config.peft_type, "value", config.peft_type).lower()
    raise ValueError(
        f"adapter {adapter_name!r} ({method}) does not fit this base model: {details}. This "
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
def text_rows_for_classes(model: nn.Module, class_index: torch.Tensor | None) -> Iterator[None]:
    """Tell class-specific layers which class each row of the next text batch belongs to (for chunked encoding)."""
    layers = [layer for layer in prompt_layers(model) if hasattr(layer, "row_classes")]
    previous = [layer.row_classes for layer in layers]
    for layer in layers:
        layer.row_classes = class_index
    try:
        yield
    finally:
        for layer, value in zip(layers, previous):
            layer.row_classes = value
