"""CLIP image transforms in PIL + torch, configured from a transformers `CLIPImageProcessor`.

torchvision has no CPU wheel on our machines, so CoOp's pipelines are re-implemented here from the processor's
settings (size, crop size, mean, std, resample, rescale factor):

- train: random resized crop straight to the crop size (scale (0.08, 1), ratio (3/4, 4/3), the processor's
  resample, bicubic for CLIP), horizontal flip with p=0.5, rescale + normalise;
- test: resize the shorter side to `size` (int(size * long / short) for the other side), center crop, rescale +
  normalise. The crop is placed as the field places it (`center_crop="torchvision"`, the default): torchvision's
  `CenterCrop`, used by OpenAI CLIP's preprocessing and Dassl's test transform, puts it at
  `int(round((size - crop) / 2))` (Python rounding), so the protocols' evaluation (`training.evaluation`, DPL's
  validation view) equals the released pipelines. `center_crop="processor"` floors instead, as transformers'
  `CLIPImageProcessor` does, and then reproduces `CLIPImageProcessor(images)` (PIL backend) to float precision: use
  it where a transformers pipeline is emulated. `PromptClassifier.predict` calls the image processor itself.

Randomness comes from a seedable `torch.Generator` (the global torch RNG when none is given), with the same draws as
torchvision's `RandomResizedCrop.get_params` and `RandomHorizontalFlip`.
"""

import math
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch


def _field(size, key: str):
    if size is None:
        return None
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


@dataclass(frozen=True)
class ImageSettings:
    shortest_edge: int | None  # resize the shorter side to this ...
    resize_hw: tuple[int, int] | None  # ... or to exactly (height, width)
    crop_hw: tuple[int, int] | None  # center crop (test) / output size (train); None: no crop
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resample: int
    rescale_factor: float

    @classmethod
    def from_image_processor(cls, ip) -> "ImageSettings":
        size, crop = getattr(ip, "size", None), getattr(ip, "crop_size", None)
        shortest = _field(size, "shortest_edge") if getattr(ip, "do_resize", True) else None
        if getattr(ip, "do_resize", True) and shortest is None:
            h, w = _field(size, "height"), _field(size, "width")
            if h is None or w is None:
                raise ValueError(
                    f"Unsupported image processor `size` {size!r}: need 'shortest_edge' or 'height'+'width'."
                )
            resize_hw = (int(h), int(w))
        else:
            resize_hw = None
        crop_hw = None
        if getattr(ip, "do_center_crop", True) and crop is not None:
            crop_hw = (int(_field(crop, "height")), int(_field(crop, "width")))
        mean = ip.image_mean if getattr(ip, "do_normalize", True) else 0.0
        std = ip.image_std if getattr(ip, "do_normalize", True) else 1.0
        return cls(
            shortest_edge=None if shortest is None else int(shortest),
            resize_hw=resize_hw,
            crop_hw=crop_hw,
            mean=tuple(float(m) for m in np.broadcast_to(mean, (3,))),
            std=tuple(float(s) for s in np.broadcast_to(std, (3,))),
            resample=int(getattr(ip, "resample", PIL.Image.BICUBIC)),
            rescale_factor=float(ip.rescale_factor) if getattr(ip, "do_rescale", True) else 1.0,
        )

    @property
    def train_hw(self) -> tuple[int, int]:
        if self.crop_hw is not None:
            return self.crop_hw
        if self.resize_hw is not None:
            return self.resize_hw
        return (self.shortest_edge, self.shortest_edge)


def to_rgb(image: PIL.Image.Image) -> PIL.Image.Image:
    """RGB, compositing any transparency on white (as transformers' `convert_to_rgb` does)."""
    if "A" in image.getbands() or image.info.get("transparency") is not None:
        image = image.convert("RGBA")
        white = PIL.Image.new("RGBA", image.size, (255, 255, 255, 255))
        return PIL.Image.alpha_composite(white, image).convert("RGB")
    return image.convert("RGB")


CENTER_CROPS = ("torchvision", "processor")


def _center_crop_torchvision(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """torchvision's `CenterCrop` of an (H, W, C) array: a smaller image is zero-padded by floor/ceil halves (left/top
    get the floor), then the crop starts at `int(round((H - ch) / 2))`, `int(round((W - cw) / 2))`."""
    h, w = arr.shape[:2]
    if ch > h or cw > w:
        top, left = max(ch - h, 0) // 2, max(cw - w, 0) // 2
        canvas = np.zeros((max(ch, h), max(cw, w), arr.shape[2]), dtype=arr.dtype)
        canvas[top : top + h, left : left + w] = arr
        arr, h, w = canvas, canvas.shape[0], canvas.shape[1]
    top, left = int(round((h - ch) / 2.0)), int(round((w - cw) / 2.0))
    return arr[top : top + ch, left : left + cw]


def _center_crop(arr: np.ndarray, ch: int, cw: int) -> np.ndarray:
    """transformers' center crop of an (H, W, C) array: top/left = (H - ch) // 2, (W - cw) // 2; zero-pads a smaller
    image."""
    h, w = arr.shape[:2]
    top, left = (h - ch) // 2, (w - cw) // 2
    if top >= 0 and left >= 0:
        return arr[top : top + ch, left : left + cw]
    nh, nw = max(ch, h), max(cw, w)
    canvas = np.zeros((nh, nw, arr.shape[2]), dtype=arr.dtype)
    tp, lp = math.ceil((nh - h) / 2), math.ceil((nw - w) / 2)
    canvas[tp : tp + h, lp : lp + w] = arr
    top, left = top + tp, left + lp
    return canvas[max(0, top) : min(nh, top + ch), max(0, left) : min(nw, left + cw)]


def random_resized_crop_params(
    width: int, height: int, scale: tuple[float, float], ratio: tuple[float, float], generator: torch.Generator | None
) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a random crop covering `scale` of the area with aspect ratio in `ratio`
    (log-uniform); after 10 failed tries, the largest center crop whose ratio is clamped into `ratio`."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=generator).item()
        aspect = math.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=generator).item())
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            i = int(torch.randint(0, height - h + 1, (1,), generator=generator).item())
            j = int(torch.randint(0, width - w + 1, (1,), generator=generator).item())
            return i, j, h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


class CLIPTransform:
    """Batch transform for `Dataset.with_transform`: `{"image": [PIL], "label": [int]}` ->
    `{"pixel_values": [FloatTensor[3, H, W]], "labels": [int]}`.

    In DataLoader workers a given `generator` is replaced by a per-worker one seeded from the worker's seed (distinct
    per worker and per epoch, reproducible from the loader's seed), so workers never repeat each other's crops."""

    def __init__(
        self,
        settings: ImageSettings,
        train: bool,
        generator: torch.Generator | None = None,
        *,
        scale: tuple[float, float] = (0.08, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        flip_p: float = 0.5,
        center_crop: str = "torchvision",
        image_column: str = "image",
        label_column: str = "label",
    ):
        if not (0 < scale[0] <= scale[1] <= 1):
            raise ValueError(f"`scale` must satisfy 0 < min <= max <= 1, got {scale}.")
        if not (0 < ratio[0] <= ratio[1]):
            raise ValueError(f"`ratio` must satisfy 0 < min <= max, got {ratio}.")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"`flip_p` must be in [0, 1], got {flip_p}.")
        if center_crop not in CENTER_CROPS:
            raise ValueError(f"`center_crop` must be one of {CENTER_CROPS}, got {center_crop!r}.")
        self.center_crop = center_crop
        self.settings, self.train, self.generator = settings, train, generator
        self.scale, self.ratio, self.flip_p = scale, ratio, flip_p
        self.image_column, self.label_column = image_column, label_column
        self._mean = torch.tensor(settings.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(settings.std, dtype=torch.float32).view(3, 1, 1)
        self._worker_key, self._worker_gen = None, None

    def _rng(self) -> torch.Generator | None:
        info = torch.utils.data.get_worker_info()
        if info is None or self.generator is None:
            return self.generator  # workers' global torch RNG is already seeded per worker by the DataLoader
        if self._worker_key != (info.id, info.seed):
            self._worker_key = (info.id, info.seed)
            self._worker_gen = torch.Generator().manual_seed((info.seed + self.generator.initial_seed()) % 2**63)
        return self._worker_gen

    def _normalize(self, arr: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.array(arr, dtype=np.float32)).permute(2, 0, 1)  # a writable float copy
        return (x * self.settings.rescale_factor - self._mean) / self._std

    def test_image(self, image: PIL.Image.Image) -> torch.Tensor:
        s = self.settings
        image = to_rgb(image)
        w, h = image.size
        if s.shortest_edge is not None:
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s.shortest_edge, int(s.shortest_edge * long / short)
            image = image.resize((new_short, new_long) if w <= h else (new_long, new_short), resample=s.resample)
        elif s.resize_hw is not None:
            image = image.resize((s.resize_hw[1], s.resize_hw[0]), resample=s.resample)
        arr = np.asarray(image)
        if s.crop_hw is not None:
            crop = _center_crop_torchvision if self.center_crop == "torchvision" else _center_crop
            arr = crop(arr, *s.crop_hw)
        return self._normalize(arr)

    def train_image(self, image: PIL.Image.Image) -> torch.Tensor:
        g = self._rng()
        image = to_rgb(image)
        i, j, h, w = random_resized_crop_params(image.size[0], image.size[1], self.scale, self.ratio, g)
        out_h, out_w = self.settings.train_hw
        image = image.crop((j, i, j + w, i + h)).resize((out_w, out_h), resample=self.settings.resample)
        if torch.rand(1, generator=g).item() < self.flip_p:
            image = image.transpose(PIL.Image.Transpose.FLIP_LEFT_RIGHT)
        return self._normalize(np.asarray(image))

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        fn = self.train_image if self.train else self.test_image
        return {
            "pixel_values": [fn(im) for im in batch[self.image_column]],
            "labels": [int(y) for y in batch[self.label_column]],
        }


def make_transform(image_processor, train: bool, generator: torch.Generator | None = None, **kwargs) -> CLIPTransform:
    """A `CLIPTransform` with the settings of `image_processor` (a `CLIPImageProcessor` or anything with its
    `size`/`crop_size`/`image_mean`/`image_std`/`resample`/`rescale_factor`), for `Dataset.with_transform`.

    `kwargs` go to `CLIPTransform` (`scale`, `ratio`, `flip_p`, `center_crop`, `image_column`, `label_column`);
    `center_crop="processor"` emulates transformers' image processor instead of torchvision's (the field's) crop."""
    return CLIPTransform(ImageSettings.from_image_processor(image_processor), train, generator, **kwargs)


def collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Stacks transformed examples into `{"pixel_values": [B, 3, H, W], "labels": [B]}` (a DataLoader `collate_fn`)."""
    return {
        "pixel_values": torch.stack([e["pixel_values"] for e in examples]),
        "labels": torch.tensor([int(e["labels"]) for e in examples], dtype=torch.long),
    }
