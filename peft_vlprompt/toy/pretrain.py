"""Contrastive pretraining of the toy CLIP (or toy SigLIP) on the toy world (deterministic, CPU, minutes).

A small `transformers.CLIPModel` (real CLIP vocabulary, so the shipped BPE tokenizer and every method work
unchanged; or a `SiglipModel`, see `families.py`) learns from images of the toy world paired with captions:

* images: domains drawn with `domain_weights` (by default `night` is never seen and `photo` only sometimes),
  rendered at `difficulty` (by default cleaner than the downstream default of 1.0); with `distinct_classes` (the
  default) a batch holds each object class at most once, as CLIP's batches hold distinct image-text pairs, else
  classes are drawn uniformly with repeats;
* captions: a template (generic or naming the domain, see `captions.py`) filled with the class name; optionally
  (`partial_caption_prob`, `wrong_caption_prob`, both 0 by default) only the shape or only the colour, or a wrong
  shape/colour, like alt-text;
* loss: symmetric InfoNCE with a learnable logit scale (SigLIP: the sigmoid loss) where an image's positives are
  its own caption (right or wrong, as alt-text) and every caption in the batch that truthfully describes it ("red
  circle", "circle" or "red" for a red circle; soft targets), so repeated classes in a batch are not pushed apart.

Why distinct classes and exact captions by default: with several positives per image the loss is lowest when the
positives' logits tie, and any residual difference between them grows with the logit scale, so the learned
temperature stops rising far below CLIP's cap (measured 1,500-step runs: 25 with 10 % partial and 2 % wrong
captions, 41 with exact captions, 69 with exact captions and distinct classes; README). With one true caption per
image, as in CLIP's web batches, the scale keeps rising while the fit improves and reaches the cap. A network
learning rate of 5e-4 (half the earlier 1e-3) and CLIP ViT-B's 512-d joint space: with them the scale reaches the
cap by step 2,000 and zero-shot accuracy on the unseen `night` domain is higher than at 1e-3 with a 64-d space,
where the scale also ended near the cap (README lists the runs, and that downstream runs took part in that choice).

Everything is seeded (`torch.manual_seed`, one `numpy` generator per step) and runs with
`torch.use_deterministic_algorithms(True)` and a fixed thread count, so the same config gives bit-identical
weights on the same torch version and CPU.
"""

import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from .._atomic import normal_mode
from .captions import COLOR_TEMPLATES, DOMAIN_TEMPLATES, GENERIC_TEMPLATES
from .families import CLIP_MEAN, CLIP_STD, FAMILIES, contrastive_loss, sigmoid_loss  # noqa: F401 (re-exported)
from .world import COLORS, DOMAINS, IMAGE_SIZE, OBJECT_CLASSES, SHAPES, render_array

logger = logging.getLogger(__name__)

STORAGE_DTYPE = torch.float16  # the shipped files' weight matrices (half the size); they load as float32


@dataclass
class ToyPretrainConfig:
    """Settings of the toy CLIP and of its contrastive pretraining.

    Args:
        family (`str`): `"clip"` (softmax InfoNCE, the CLIP BPE) or `"siglip"` (sigmoid loss, a word-level toy
            tokenizer); see `families.py`.
        steps (`int`): optimisation steps.
        batch_size (`int`): image-caption pairs per step (at most 48, the object classes, with `distinct_classes`).
        learning_rate (`float`): peak AdamW learning rate (linear warm-up, cosine decay to 0).
        warmup_steps (`int`): linear warm-up steps.
        weight_decay (`float`): AdamW decay of matrices (not of embeddings, biases, norms, logit scale).
        temperature_lr_multiplier (`float`): the logit scale (and SigLIP's logit bias) learn this many times faster,
            so that they can follow their optimum (for CLIP: up to the cap of 100) within a few thousand steps; at
            10x the toy CLIP's scale lagged its optimum (47 against 69 at 100x after 1,500 steps).
        seed (`int`): seeds the initialisation, the images and the captions.
        num_threads (`int`): `torch.set_num_threads` during training (part of bit-for-bit reproducibility).
        domains (`list[str]`): pretraining domains; `domain_weights` gives their sampling weights.
        domain_weights (`list[float]`): one weight per entry of `domains`.
        difficulty (`list[float]`): `[min, max]`; each pretraining image's difficulty (clutter, noise, jitter,
            see `world.render`) is uniform in this range. Easy images let the small ViT discover shape at all.
        partial_caption_prob (`float`): probability that a caption names only the shape or only the colour.
        wrong_caption_prob (`float`): probability that a caption names a wrong shape or colour.
        domain_caption_prob (`float`): probability of a template naming the domain (else a generic one).
        image_pool_size (`int`): render this many images once and re-caption them every step (faster: rendering
            costs ~3 ms an image); 0 renders fresh images every step.
        distinct_classes (`bool`): each batch holds every object class at most once, so an image's only true
            caption in the batch is its own (see the module docstring).
        text_width, text_layers, vision_width, vision_layers, patch_size, projection_dim (`int`): model size.
        log_every (`int`): steps between loss logs.
    """

    family: str = field(default="clip", metadata={"help": "Model family to pretrain: clip or siglip."})
    steps: int = field(default=3000, metadata={"help": "Optimisation steps."})
    batch_size: int = field(default=48, metadata={"help": "Image-caption pairs per step."})
    learning_rate: float = field(default=5e-4, metadata={"help": "Peak AdamW learning rate."})
    warmup_steps: int = field(default=200, metadata={"help": "Linear warm-up steps."})
    weight_decay: float = field(default=0.05, metadata={"help": "AdamW weight decay of weight matrices."})
    temperature_lr_multiplier: float = field(
        default=100.0, metadata={"help": "Learning rate of the logit scale (and SigLIP's bias) / learning_rate."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of initialisation, images and captions."})
    num_threads: int = field(default=1, metadata={"help": "torch.set_num_threads during training."})
    domains: list[str] = field(
        default_factory=lambda: ["photo", "sketch", "cartoon", "painting"], metadata={"help": "Pretraining domains."}
    )
    domain_weights: list[float] = field(
        default_factory=lambda: [0.2, 0.3, 0.35, 0.15], metadata={"help": "Sampling weight of each domain."}
    )
    difficulty: list[float] = field(
        default_factory=lambda: [0.0, 0.6], metadata={"help": "Per-image difficulty is uniform in [min, max]."}
    )
    partial_caption_prob: float = field(default=0.0, metadata={"help": "P(caption names only shape or colour)."})
    wrong_caption_prob: float = field(default=0.0, metadata={"help": "P(caption names a wrong shape or colour)."})
    domain_caption_prob: float = field(default=0.5, metadata={"help": "P(template names the domain)."})
    image_pool_size: int = field(default=16384, metadata={"help": "Images rendered once and reused; 0 = fresh."})
    distinct_classes: bool = field(
        default=True, metadata={"help": "Each batch holds every object class at most once (batch_size <= 48)."}
    )
    text_width: int = field(default=64, metadata={"help": "Text transformer width (token table: 49408 x width)."})
    text_layers: int = field(default=12, metadata={"help": "Text transformer layers."})
    vision_width: int = field(default=64, metadata={"help": "Vision transformer width."})
    vision_layers: int = field(default=12, metadata={"help": "Vision transformer layers."})
    head_dim: int = field(
        default=64, metadata={"help": "Attention head size (OpenAI's CLIP: 64); heads = width / head_dim."}
    )
    patch_size: int = field(default=8, metadata={"help": "ViT patch size (the image is 32 px)."})
    projection_dim: int = field(default=512, metadata={"help": "Joint embedding size."})
    log_every: int = field(default=250, metadata={"help": "Steps between loss logs."})

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"`family` must be one of {sorted(FAMILIES)}, got {self.family!r}")
        for name in (
            "steps",
            "batch_size",
            "num_threads",
            "text_width",
            "text_layers",
            "vision_width",
            "vision_layers",
            "patch_size",
            "projection_dim",
            "head_dim",
            "log_every",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, got {getattr(self, name)}")
        if self.warmup_steps < 0 or self.image_pool_size < 0:
            raise ValueError(
                f"`warmup_steps` and `image_pool_size` must be >= 0, got {self.warmup_steps}, {self.image_pool_size}"
            )
        if self.learning_rate <= 0 or self.temperature_lr_multiplier <= 0:
            raise ValueError(
                "`learning_rate` and `temperature_lr_multiplier` must be > 0, got "
                f"{self.learning_rate}, {self.temperature_lr_multiplier}"
            )
        for name in ("partial_caption_prob", "wrong_caption_prob", "domain_caption_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"`{name}` must be in [0, 1], got {getattr(self, name)}")
        if self.partial_caption_prob + self.wrong_caption_prob > 1:
            raise ValueError(
                "`partial_caption_prob` + `wrong_caption_prob` must be <= 1, got "
                f"{self.partial_caption_prob + self.wrong_caption_prob}"
            )
        bad = [d for d in self.domains if d not in DOMAINS]
        if bad or not self.domains:
            raise ValueError(f"`domains` must be a non-empty subset of {list(DOMAINS)}, got {self.domains}")
        if (
            len(self.domain_weights) != len(self.domains)
            or min(self.domain_weights) < 0
            or sum(self.domain_weights) <= 0
        ):
            raise ValueError(
                f"`domain_weights` must be one weight >= 0 per domain with a positive sum, got {self.domain_weights}"
            )
        if self.distinct_classes and self.batch_size > len(OBJECT_CLASSES):
            raise ValueError(
                f"`batch_size` must be <= {len(OBJECT_CLASSES)} (the object classes) with `distinct_classes`, "
                f"got {self.batch_size}"
            )
        if IMAGE_SIZE % self.patch_size:
            raise ValueError(f"`patch_size` must divide {IMAGE_SIZE}, got {self.patch_size}")
        if self.text_width % self.head_dim or self.vision_width % self.head_dim:
            raise ValueError(
                f"`text_width` and `vision_width` must be multiples of `head_dim` ({self.head_dim}), got "
                f"{self.text_width}, {self.vision_width}"
            )
        if len(self.difficulty) != 2 or not 0 <= self.difficulty[0] <= self.difficulty[1] <= 3:
            raise ValueError(f"`difficulty` must be [min, max] with 0 <= min <= max <= 3, got {self.difficulty}")


def toy_clip_config(cfg: ToyPretrainConfig):
    """The model config of the toy model of `cfg.family`: small widths, 64-dim heads (see `families.py`)."""
    return FAMILIES[cfg.family].config(cfg)


def normalize_images(images: np.ndarray, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """uint8 `(B, H, W, 3)` -> normalised float `(B, 3, H, W)`; equals the family's image processor at 32 px."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    mean = torch.tensor(mean).view(1, 3, 1, 1)
    std = torch.tensor(std).view(1, 3, 1, 1)
    return (x - mean) / std


def sample_caption(rng: np.random.Generator, class_id: int, domain: str, cfg: ToyPretrainConfig) -> tuple[str, str]:
    """One noisy caption of an image of `class_id`, and its key (what it names, for the positives)."""
    s, c = OBJECT_CLASSES[class_id]
    u = rng.random()
    kind = "full"
    if u < cfg.wrong_caption_prob:
        if rng.random() < 0.5:
            s = (s + 1 + int(rng.integers(len(SHAPES) - 1))) % len(SHAPES)
        else:
            c = (c + 1 + int(rng.integers(len(COLORS) - 1))) % len(COLORS)
    elif u < cfg.wrong_caption_prob + cfg.partial_caption_prob:
        kind = "shape" if rng.random() < 0.5 else "color"
    if kind == "color":
        phrase, templates = COLORS[c], COLOR_TEMPLATES
    else:
        phrase = SHAPES[s] if kind == "shape" else f"{COLORS[c]} {SHAPES[s]}"
        templates = DOMAIN_TEMPLATES[domain] if rng.random() < cfg.domain_caption_prob else GENERIC_TEMPLATES
    return templates[int(rng.integers(len(templates)))].format(phrase), f"{kind}:{phrase}"


def _named_parts(key: str) -> tuple[int, int]:
    """(shape, colour) indices a caption key (`"full:red circle"`, `"shape:circle"`, `"color:red"`) names; -1: not named."""
    kind, phrase = key.split(":")
    if kind == "full":
        color, shape = phrase.split(" ")
        return SHAPES.index(shape), COLORS.index(color)
    return (SHAPES.index(phrase), -1) if kind == "shape" else (-1, COLORS.index(phrase))


def caption_positives(classes: list[int], keys: list[str]) -> torch.Tensor:
    """(images, captions) bool: image i's own caption, and every caption that describes image i's class."""
    shape, color = torch.tensor([OBJECT_CLASSES[k] for k in classes]).T
    named_shape, named_color = torch.tensor([_named_parts(key) for key in keys]).T
    fits_shape = (named_shape[None, :] == -1) | (named_shape[None, :] == shape[:, None])
    fits_color = (named_color[None, :] == -1) | (named_color[None, :] == color[:, None])
    return (fits_shape & fits_color) | torch.eye(len(classes), dtype=torch.bool)


class _Tokens:
    """Caches token ids of the (few hundred distinct) captions; batches them as the family's text tower expects."""

    def __init__(self, family):
        self.family = family
        self.tokenizer = family.tokenizer()
        self.cache: dict[str, list[int]] = {}

    def __call__(self, captions: list[str]) -> dict[str, torch.Tensor]:
        ids = [self.cache.setdefault(t, self.tokenizer(t)["input_ids"]) for t in captions]
        return self.family.text_inputs(ids)


def _optimizer(model, cfg: ToyPretrainConfig):
    decay, no_decay, temperature = [], [], []
    for name, p in model.named_parameters():
        if name in ("logit_scale", "logit_bias"):
            temperature.append(p)
        else:  # embeddings keep their init where never trained (unused vocabulary rows must not decay to 0)
            (decay if p.ndim >= 2 and "embedding" not in name else no_decay).append(p)
    lr = cfg.learning_rate
    groups = [
        {"params": decay, "weight_decay": cfg.weight_decay, "lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "lr": lr},
        # Adam moves a parameter by about lr per step: at the base rate a few thousand steps could not carry the
        # log-scale from log(1/0.07) to CLIP's cap log(100) (CLIP itself trains for ~400k steps)
        {"params": temperature, "weight_decay": 0.0, "lr": lr * cfg.temperature_lr_multiplier},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.98), eps=1e-6)

    def schedule(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, schedule)


def _batch_images(cfg: ToyPretrainConfig, rng: np.random.Generator, pool) -> tuple[np.ndarray, list[int], list[str]]:
    weights = np.asarray(cfg.domain_weights, dtype=np.float64) / sum(cfg.domain_weights)
    if pool is not None:
        if cfg.distinct_classes:
            members = pool[3]  # pool indices of each class present in the pool
            idx = [members[k][rng.integers(len(members[k]))] for k in rng.permutation(len(members))[: cfg.batch_size]]
        else:
            idx = rng.integers(len(pool[0]), size=cfg.batch_size)
        return pool[0][idx], [pool[1][i] for i in idx], [pool[2][i] for i in idx]
    if cfg.distinct_classes:
        classes = rng.permutation(len(OBJECT_CLASSES))[: cfg.batch_size].tolist()
    else:
        classes = rng.integers(len(OBJECT_CLASSES), size=cfg.batch_size).tolist()
    domains = [cfg.domains[i] for i in rng.choice(len(cfg.domains), size=cfg.batch_size, p=weights)]
    seeds = rng.integers(2**63, size=cfg.batch_size)
    levels = rng.uniform(*cfg.difficulty, size=cfg.batch_size)
    images = np.stack(
        [
            render_array(k, d, np.random.default_rng(int(s)), float(lv))
            for k, d, s, lv in zip(classes, domains, seeds, levels)
        ]
    )
    return images, classes, domains


def pretrain_toy_clip(cfg: ToyPretrainConfig | None = None, callback: Callable | None = None):
    """Train a toy CLIP from scratch with `cfg`; returns the `CLIPModel` (eval mode, fp32).

    `callback(step, model)`, if given, runs every `cfg.log_every` steps (e.g. a zero-shot probe); it must leave
    the model's weights and the global RNGs alone, or the run is no longer reproducible.
    """
    cfg = cfg or ToyPretrainConfig()
    family = FAMILIES[cfg.family]
    prev_threads, prev_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    prev_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(cfg.num_threads)
    torch.use_deterministic_algorithms(True)
    # NaN-filling every torch.empty costs ~1/3 of a step here and only matters for code that reads
    # uninitialised memory, which would show up as non-reproducible weights in the determinism test
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        torch.manual_seed(cfg.seed)
        model = family.model(cfg)
        model.train()
        opt, sched = _optimizer(model, cfg)
        tokens = _Tokens(family)
        pool = None
        if cfg.image_pool_size:
            t0 = time.perf_counter()
            pool_cfg = ToyPretrainConfig(
                **{**asdict(cfg), "batch_size": cfg.image_pool_size, "image_pool_size": 0, "distinct_classes": False}
            )
            pool = _batch_images(pool_cfg, np.random.default_rng([cfg.seed, 1]), None)
            members = [np.flatnonzero(np.asarray(pool[1]) == k) for k in range(len(OBJECT_CLASSES))]
            members = [m for m in members if len(m)]
            if cfg.distinct_classes and len(members) < cfg.batch_size:
                raise ValueError(
                    f"`image_pool_size` {cfg.image_pool_size} holds {len(members)} object classes, fewer than "
                    f"`batch_size` {cfg.batch_size} (`distinct_classes`)"
                )
            pool = (*pool, members)
            logger.info("rendered an image pool of %d in %.1fs", cfg.image_pool_size, time.perf_counter() - t0)
        t0 = time.perf_counter()
        for step in range(cfg.steps):
            rng = np.random.default_rng([cfg.seed, 2, step])
            images, classes, domains = _batch_images(cfg, rng, pool)
            captions, keys = zip(*(sample_caption(rng, k, d, cfg) for k, d in zip(classes, domains)))
            positives = caption_positives(classes, keys)
            text = tokens(list(captions))
            pixels = normalize_images(images, family.image_mean, family.image_std)
            loss = family.loss(model(**text, pixel_values=pixels).logits_per_image, positives)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            family.after_step(model)
            if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
                logger.info(
                    "step %d/%d loss %.4f logit_scale %.2f (%.1fs)",
                    step + 1,
                    cfg.steps,
                    loss.item(),
                    model.logit_scale.exp().item(),
                    time.perf_counter() - t0,
                )
                if callback is not None:
                    callback(step + 1, model.eval())
                    model.train()
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)
        torch.utils.deterministic.fill_uninitialized_memory = prev_fill
    return model.eval()


def save_toy_clip(model, output_dir: str, cfg: ToyPretrainConfig | None = None) -> None:
    """Write the model directory (config, weights, tokenizer, processor), each file atomically.

    Weight matrices are stored in float16 (half the size; the shipped model is these rounded weights), scalars such
    as the logit scale in float32; `config.json` says float32, so `from_pretrained` loads every tensor as float32.
    """
    from safetensors.torch import load_file, save_file

    family = FAMILIES[cfg.family if cfg is not None else "clip"]
    os.makedirs(output_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(dir=output_dir, prefix=".tmp-")
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        weights = os.path.join(tmp, "model.safetensors")
        tensors = {k: (v.to(STORAGE_DTYPE) if v.numel() > 1 else v) for k, v in load_file(weights).items()}
        save_file(tensors, weights, metadata={"format": "pt"})
        family.save_processor(tmp)
        if cfg is not None:
            with open(os.path.join(tmp, "toy_pretrain_config.json"), "w") as f:
                json.dump(asdict(cfg), f, indent=2)
        for name in sorted(os.listdir(tmp)):
            normal_mode(os.path.join(tmp, name))  # some writers create 0600 files; the umask decides
            os.replace(os.path.join(tmp, name), os.path.join(output_dir, name))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
