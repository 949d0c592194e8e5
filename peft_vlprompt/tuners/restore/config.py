"""RESTORE (Yang et al., "RESTORE: Towards Feature Shift for Vision-Language Prompt Learning",
https://arxiv.org/abs/2403.06136; released code `Yaphabates/RESTORE_@4c64a17`, trainer `MaPLe_FSA`)."""

import re
from dataclasses import dataclass, field

from ...backbones import Backbone
from ..deep_prompt.config import DeepPromptConfig
from ..deep_prompt.presets import CTX_INIT, depth_lengths, tower_layers

FS_DEFINITIONS = ("prompt_norm", "features")

# (vis_calib_r, text_calib_r, fs_loss_r) per dataset, from the released `run_maple_fsa.sh`
RESTORE_DATASET_SETTINGS: dict[str, tuple[float, float, float]] = {
    "fgvcaircraft": (0.1, 0.1, 1.0),
    "caltech101": (0.1, 0.1, 1.0),
    "stanfordcars": (0.1, 0.1, 1.0),
    "oxfordflowers": (0.1, 0.1, 1.0),
    "food101": (0.1, 0.1, 1.0),
    "oxfordpets": (0.01, 0.1, 1.0),
    "eurosat": (0.01, 0.1, 1.0),
    "sun397": (0.05, 0.05, 1.0),
    "ucf101": (0.05, 0.05, 1.0),
    "imagenet": (0.05, 0.05, 1.0),
    "dtd": (0.15, 0.1, 0.5),
}
_ALIASES = {"flowers102": "oxfordflowers", "describabletextures": "dtd", "aircraft": "fgvcaircraft"}


def _number(name: str, value, minimum: float = 0.0, strict: bool = False) -> None:
    bad = isinstance(value, bool) or not isinstance(value, (int, float))
    if bad or value < minimum or (strict and value == minimum):
        raise ValueError(f"`{name}` must be a number {'>' if strict else '>='} {minimum}, got {value!r}")


@dataclass
class RestoreAdapterConfig(DeepPromptConfig):
    """RESTORE = MaPLe-coupled deep prompts + "surgery" feature adapters + a feature-shift consistency loss.

    - Surgery adapters on the projected features (wrapping `text_projection` and `visual_projection`):
      `f' = f + r · FFN(LN(f))`, FFN = Linear(D, 4D) - QuickGELU - Linear(4D, D). This equals the released
      `r · A(f) + (1 - r) · f` with `A(f) = f + FFN(LN(f))`. The ratios r_t, r_v are saved buffers, not trained.
    - Dynamic ratios: once, after epoch ⌊E/3⌋ (0-based), `r_t += 0.02 · S_t`, `r_v += 0.005 · S_v`, where S is the
      mean over the deep layers (index >= 1 with coupled prompts) of ‖PᵀP‖_F; call
      `peft_vlprompt.update_restore_ratios(model, epoch, num_epochs)` at the end of every epoch.
    - Feature-shift consistency (`peft_vlprompt.losses.restore_losses`), weight `fs_weight`, definition
      `fs_definition`: `"prompt_norm"` (released code) or `"features"` (the paper's definition on hidden states).
    - On attention-pooling families (SigLIP) the appended vision prompts are dropped before the pooling head, whose
      output the vision surgery adapter wraps; the `"features"` shift compares the backbone's image tokens only.

    Defaults are the released base-to-new setting for ViT-B/16 (`configs/trainers/MaPLe_FSA/
    vit_b16_c2_ep5_batch4_2ctx.yaml`: 2 prompts, depth 9, "a photo of a", 10 epochs despite the file name). The
    initial ratios default to `TEXT_CALIB_R` / `VIS_CALIB_R` = 0.1 / 0.01 (the argparse defaults are 0.1 / 0.1);
    `restore_preset(dataset)` gives the per-dataset values of `run_maple_fsa.sh`.

    Args:
        text_ratio / vision_ratio (`float`): initial surgery ratios r_t / r_v.
        text_ratio_step / vision_ratio_step (`float`): coefficients of the one-time ratio update (0.02 / 0.005).
        fs_weight (`float`): weight of the feature-shift consistency term (`FS_LOSS_R`).
        fs_definition (`str`): `"prompt_norm"` or `"features"`.
        adapter_hidden_mult (`int`): FFN hidden size as a multiple of the projection dim (4).
    """

    text_lengths: list[int] | None = field(
        default_factory=lambda: [2] * 9 + [0] * 3,
        metadata={"help": "Prompt length per text layer; default 2 prompts at depth 9 of 12 layers (MaPLe)."},
    )
    coupling: str = field(default="maple", metadata={"help": "Must be 'maple': RESTORE couples the towers."})
    ctx_init: str | None = field(default=CTX_INIT, metadata={"help": "Words initialising the input context."})
    text_ratio: float = field(default=0.1, metadata={"help": "Initial text surgery ratio r_t (TEXT_CALIB_R)."})
    vision_ratio: float = field(default=0.01, metadata={"help": "Initial vision surgery ratio r_v (VIS_CALIB_R)."})
    text_ratio_step: float = field(default=0.02, metadata={"help": "r_t += step · S_t at epoch ⌊E/3⌋."})
    vision_ratio_step: float = field(default=0.005, metadata={"help": "r_v += step · S_v at epoch ⌊E/3⌋."})
    fs_weight: float = field(default=1.0, metadata={"help": "Weight of the feature-shift consistency loss."})
    fs_definition: str = field(
        default="prompt_norm",
        metadata={"help": "'prompt_norm' (released code) or 'features' (paper).", "choices": FS_DEFINITIONS},
    )
    adapter_hidden_mult: int = field(
        default=4, metadata={"help": "Surgery FFN hidden size / projection dim.", "min": 1}
    )

    method_name = "restore"

    def __post_init__(self):
        super().__post_init__()
        if self.coupling != "maple":
            raise ValueError(f"RESTORE uses MaPLe-coupled prompts: `coupling` must be 'maple', got {self.coupling!r}")
        if self.fs_definition not in FS_DEFINITIONS:
            raise ValueError(f"`fs_definition` must be one of {FS_DEFINITIONS}, got {self.fs_definition!r}")
        for name in ("text_ratio", "vision_ratio", "text_ratio_step", "vision_ratio_step", "fs_weight"):
            _number(name, getattr(self, name))
        if isinstance(self.adapter_hidden_mult, bool) or not isinstance(self.adapter_hidden_mult, int):
            raise ValueError(f"`adapter_hidden_mult` must be an int >= 1, got {self.adapter_hidden_mult!r}")
        if self.adapter_hidden_mult < 1:
            raise ValueError(f"`adapter_hidden_mult` must be an int >= 1, got {self.adapter_hidden_mult!r}")

    @property
    def deep_layers(self) -> list[int]:
        """Indices >= 1 whose vision prompts are coupled to text prompts (the layers RESTORE's shift terms use)."""
        return [i for i, n in enumerate(self.vision_lengths or ()) if i >= 1 and n]

    def target_module_names(self, backbone: Backbone) -> list[str]:
        return super().target_module_names(backbone) + [backbone.text_projection, backbone.visual_projection]


def dataset_key(name: str) -> str:
    key = re.sub(r"[^a-z0-9]", "", name.lower())
    return _ALIASES.get(key, key)


def restore_preset(dataset_name: str, model_or_layers=None, n_ctx: int = 2, depth: int = 9, **kwargs):
    """RESTORE's released per-dataset setting: (r_v, r_t, fs_weight) from `run_maple_fsa.sh`, MaPLe prompts.

    | dataset | r_v | r_t | fs_weight |
    |---|---|---|---|
    | FGVCAircraft, Caltech101, StanfordCars, Flowers102, Food101 | 0.1 | 0.1 | 1 |
    | OxfordPets, EuroSAT | 0.01 | 0.1 | 1 |
    | SUN397, UCF101, ImageNet | 0.05 | 0.05 | 1 |
    | DTD | 0.15 | 0.1 | 0.5 |

    Args:
        dataset_name: any spelling of the dataset (`"oxford_pets"`, `"OxfordPets"`, `"DescribableTextures"`).
        model_or_layers: a CLIP model, `ClipBackbone` or layer count to size the lists to (default: 12 layers).
        n_ctx / depth: MaPLe prompt length and depth (2 / 9; depth is clipped to the model's layers).
        kwargs: other `RestoreAdapterConfig` fields.
    """
    key = dataset_key(dataset_name)
    if key not in RESTORE_DATASET_SETTINGS:
        raise ValueError(f"no RESTORE setting for dataset {dataset_name!r}; known: {sorted(RESTORE_DATASET_SETTINGS)}")
    vision_ratio, text_ratio, fs_weight = RESTORE_DATASET_SETTINGS[key]
    text_layers, vision_layers = tower_layers(12 if model_or_layers is None else model_or_layers)
    text = depth_lengths(n_ctx, depth, text_layers)
    vision = depth_lengths(n_ctx, min(depth, text_layers), vision_layers)
    settings = dict(vision_ratio=vision_ratio, text_ratio=text_ratio, fs_weight=fs_weight)
    return RestoreAdapterConfig(text_lengths=text, vision_lengths=vision, **{**settings, **kwargs})
