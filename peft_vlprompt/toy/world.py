"""A procedural, deterministic toy world of coloured shapes in several visual domains.

Classes are compositional: 8 shapes x 6 colours = 48 `objects` ("red circle", "blue star", ...), every word a
single token of CLIP's BPE vocabulary. Three tasks share the pixels: `objects` (shape and colour), `shapes`
(shape only, colour random) and `colors` (colour only, shape random), for cross-task transfer. Five domains give
domain shift: `photo` (shaded shapes on textured, noisy backgrounds with clutter), `sketch` (coloured outlines
on paper), `cartoon` (flat colours, thick black outlines), `painting` (brush strokes, warm palette, blur) and
`night` (dark, low-contrast, noisy colours).

Per-image variation (all scaled by `difficulty`, default 1.0): position, scale, rotation, colour jitter,
background texture/noise and 0-2 smaller distractor shapes. Objects stay near the centre (+-2.6 px at
difficulty 1), as in object-centric photo datasets: translation invariance is what a tiny ViT learns slowest
(measured: with +-5.8 px the 4-layer ViT reached a third of the shape accuracy in the same steps).

Every image is a pure function of a seed: `render(class_id, domain, np.random.default_rng(seed_tuple))` draws all
randomness from the generator it is given, and `toy_splits` seeds one generator per
`(seed, task, domain, split, label, index)`, so the same arguments give the same pixels on any machine.

Label order and base-to-new. The base-to-new protocol sorts the labels and calls the first half "base". The
`objects` labels are ordered so that the base half is a checkerboard over (shape, colour): class (s, c) is base
iff s + c is even. Each half therefore holds every shape (3 colours each) and every colour (4 shapes each), and
the new classes are unseen *combinations* of seen words, the analogue of new classes being related to base
classes in the CoOp benchmarks. `shapes` and `colors` keep the natural order (their new halves are new words).
"""

import functools
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

IMAGE_SIZE = 32
_SS = 4  # supersampling factor: draw at 128 px, box-downsample to 32 px (anti-aliasing)
_S = IMAGE_SIZE * _SS

SHAPES = ("circle", "square", "triangle", "star", "heart", "cross", "diamond", "moon")
COLORS = ("red", "green", "blue", "yellow", "purple", "orange")
DOMAINS = ("photo", "sketch", "cartoon", "painting", "night")
_RGB = {
    "red": (0.85, 0.12, 0.12),
    "green": (0.15, 0.65, 0.22),
    "blue": (0.13, 0.30, 0.88),
    "yellow": (0.95, 0.85, 0.15),
    "purple": (0.55, 0.22, 0.75),
    "orange": (0.97, 0.52, 0.10),
}


def _object_order() -> tuple[tuple[int, int], ...]:
    cells = [(s, c) for s in range(len(SHAPES)) for c in range(len(COLORS))]
    return tuple([sc for sc in cells if sum(sc) % 2 == 0] + [sc for sc in cells if sum(sc) % 2 == 1])


# (shape index, colour index) of each object class, in label order (base half first, see module docstring)
OBJECT_CLASSES: tuple[tuple[int, int], ...] = _object_order()
OBJECT_NAMES: tuple[str, ...] = tuple(f"{COLORS[c]} {SHAPES[s]}" for s, c in OBJECT_CLASSES)


@dataclass(frozen=True)
class ToyTask:
    """A classification task over the toy world.

    Args:
        name (`str`): task name (`"objects"`, `"shapes"`, `"colors"`).
        task_id (`int`): stable integer used in image seeds.
        classnames (`tuple[str, ...]`): class names in label order.
        template (`str`): the hand-crafted zero-shot prompt, with `{}` for the class name.
        members (`tuple[tuple[int, ...], ...]`): for each label, the object classes (indices into
            `OBJECT_CLASSES`) an image of that label is drawn from, uniformly.
    """

    name: str
    task_id: int
    classnames: tuple[str, ...]
    template: str
    members: tuple[tuple[int, ...], ...]


def _members(attr: int, value: int) -> tuple[int, ...]:
    return tuple(i for i, sc in enumerate(OBJECT_CLASSES) if sc[attr] == value)


TASKS: dict[str, ToyTask] = {
    "objects": ToyTask("objects", 0, OBJECT_NAMES, "a photo of a {}.", tuple((i,) for i in range(len(OBJECT_NAMES)))),
    "shapes": ToyTask("shapes", 1, SHAPES, "a photo of a {}.", tuple(_members(0, s) for s in range(len(SHAPES)))),
    "colors": ToyTask(
        "colors", 2, COLORS, "a photo of a {} shape.", tuple(_members(1, c) for c in range(len(COLORS)))
    ),
}
SPLITS = ("train", "val", "test")


def list_tasks() -> list[str]:
    """Names of the toy tasks."""
    return list(TASKS)


def list_domains() -> list[str]:
    """Names of the visual domains."""
    return list(DOMAINS)


def get_task(task: str) -> ToyTask:
    """The `ToyTask` called `task`."""
    if task not in TASKS:
        raise ValueError(f"`task` must be one of {list(TASKS)}, got {task!r}")
    return TASKS[task]


def classnames(task: str = "objects") -> list[str]:
    """Class names of `task` in label order."""
    return list(get_task(task).classnames)


# ----------------------------------------------------------------------------------------------------------------
# geometry


def _unit_polygon(shape: str) -> np.ndarray:
    """Vertices (y up) of `shape` with radius ~1 around the origin."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-0.82, -0.82], [0.82, -0.82], [0.82, 0.82], [-0.82, 0.82]])
    if shape == "triangle":
        t = np.deg2rad([90, 210, 330])
        return 1.1 * np.stack([np.cos(t), np.sin(t)], 1) + [0, -0.1]
    if shape == "star":
        t = np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.1, 0.45)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, y + 3], 1) / 16
    if shape == "cross":
        a, b = 0.32, 0.95
        return np.array(
            [[-a, b], [a, b], [a, a], [b, a], [b, -a], [a, -a], [a, -b], [-a, -b], [-a, -a], [-b, -a]]
            + [[-b, a], [-a, a]]
        )
    if shape == "diamond":
        return np.array([[0, 1.1], [0.6, 0], [0, -1.1], [-0.6, 0]])
    raise ValueError(f"no polygon for shape {shape!r}")


_UNIT = {s: _unit_polygon(s) for s in SHAPES if s != "moon"}


def _shape_mask(shape: str, cx: float, cy: float, radius: float, angle: float) -> Image.Image:
    """Binary `L` mask (supersampled size) of a shape centred at (cx, cy), rotated by `angle` radians."""
    img = Image.new("L", (_S, _S), 0)
    draw = ImageDraw.Draw(img)
    cos, sin = math.cos(angle), math.sin(angle)
    if shape == "moon":
        draw.ellipse([cx - radius, cy - radius, cx + radius, cy + radius], fill=255)
        ox, oy = 0.5 * radius, -0.2 * radius  # bite taken out towards the upper right, then rotated
        ox, oy = cos * ox - sin * oy, sin * ox + cos * oy
        r2 = 0.85 * radius
        draw.ellipse([cx + ox - r2, cy + oy - r2, cx + ox + r2, cy + oy + r2], fill=0)
    else:
        p = _UNIT[shape]
        x = cos * p[:, 0] - sin * p[:, 1]
        y = sin * p[:, 0] + cos * p[:, 1]
        draw.polygon([(cx + radius * u, cy - radius * v) for u, v in zip(x, y)], fill=255)
    return img


def _box_count(m: np.ndarray, width: int) -> np.ndarray:
    """Number of set pixels of binary `m` in the (2 * width + 1)^2 window around each pixel (zero padded)."""
    k = 2 * width + 1
    c = np.pad(m.astype(np.int32), ((width + 1, width), (width + 1, width))).cumsum(0).cumsum(1)
    return c[k:, k:] - c[:-k, k:] - c[k:, :-k] + c[:-k, :-k]


def _outline(mask: Image.Image, width: int, outside: bool) -> Image.Image:
    """Ring of `width` px along the border of a binary mask (inside it, or outside it when `outside`).

    Morphological erosion/dilation with a square window via box sums (PIL's rank filters are ~100x slower).
    """
    m = np.asarray(mask) > 127
    count = _box_count(m, width)
    k2 = (2 * width + 1) ** 2
    ring = (count > 0) & ~m if outside else m & (count < k2)
    return Image.fromarray(ring.astype(np.uint8) * 255)


@functools.lru_cache(maxsize=8)
def _interp(g: int) -> np.ndarray:
    """(S, g) linear-interpolation matrix that upsamples a g-point grid to S points."""
    pos = np.linspace(0, g - 1, _S)
    lo = np.minimum(np.floor(pos).astype(int), g - 2)
    w = pos - lo
    m = np.zeros((_S, g), dtype=np.float32)
    m[np.arange(_S), lo] = 1 - w
    m[np.arange(_S), lo + 1] = w
    return m


def _smooth_noise(rng: np.random.Generator, grid: int, amp: float) -> np.ndarray:
    """Smooth colour noise (S, S, 3) in [-amp, amp]: a random grid, bilinearly upsampled."""
    w = _interp(grid)
    g = rng.uniform(-amp, amp, (3, grid, grid)).astype(np.float32)
    return (w @ g @ w.T).transpose(1, 2, 0)


# ----------------------------------------------------------------------------------------------------------------
# rendering


def _jitter_color(rng: np.random.Generator, color: str, difficulty: float) -> np.ndarray:
    rgb = np.asarray(_RGB[color], dtype=np.float32)
    rgb = rgb * rng.uniform(1 - 0.25 * difficulty, 1 + 0.1 * difficulty) + rng.normal(0, 0.07 * difficulty, 3)
    return np.clip(rgb, 0, 1).astype(np.float32)


def _placement(rng: np.random.Generator, difficulty: float, scale: tuple[float, float]) -> tuple:
    r = _S * rng.uniform(*scale)
    span = min(0.5 * _S - r, 0.08 * _S * difficulty)
    cx, cy = 0.5 * _S + rng.uniform(-span, span, 2) if span > 0 else (0.5 * _S, 0.5 * _S)
    angle = rng.uniform(-1, 1) * np.deg2rad(25) * min(difficulty, 2.0)
    return float(cx), float(cy), float(r), float(angle)


def _distractors(rng: np.random.Generator, difficulty: float) -> list[tuple[Image.Image, str]]:
    """Small clutter shapes (mask, colour name) drawn behind the main object."""
    n = int(rng.integers(0, 1 + round(2 * difficulty)))
    out = []
    for _ in range(n):
        shape = SHAPES[int(rng.integers(len(SHAPES)))]
        color = COLORS[int(rng.integers(len(COLORS)))]
        r = _S * rng.uniform(0.07, 0.07 + 0.06 * min(difficulty, 2.0))
        cx, cy = rng.uniform(r, _S - r, 2)
        out.append((_shape_mask(shape, float(cx), float(cy), float(r), float(rng.uniform(-np.pi, np.pi))), color))
    return out


def _paint(canvas: np.ndarray, mask: Image.Image, color: np.ndarray, alpha: float = 1.0) -> None:
    """Alpha-blend `color` (RGB or an (S, S, 3) layer) into `canvas` where `mask` is set, in place.

    Only the mask's bounding box is touched: most masks are small, and this is the renderer's hot loop.
    """
    box = mask.getbbox()
    if box is None:
        return
    x0, y0, x1, y1 = box
    m = np.asarray(mask.crop(box), dtype=np.float32)[..., None] * (alpha / 255.0)
    region = canvas[y0:y1, x0:x1]
    layer = color[y0:y1, x0:x1] if color.ndim == 3 else color
    region += m * (layer - region)


def _render_photo(rng, shape, color, d):
    canvas = rng.uniform(0.25, 0.75, 3).astype(np.float32) + _smooth_noise(rng, 4, 0.25) + _smooth_noise(rng, 16, 0.08)
    for m, c in _distractors(rng, d):
        _paint(canvas, m, _jitter_color(rng, c, d))
    cx, cy, r, angle = _placement(rng, d, (0.2, 0.34))
    mask = _shape_mask(shape, cx, cy, r, angle)
    _paint(canvas, mask, _jitter_color(rng, color, d))
    # directional light across the object (inside its bounding box only)
    t = rng.uniform(0, 2 * np.pi)
    x0, y0, x1, y1 = mask.getbbox()
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    ramp = np.clip((math.cos(t) * (xs - cx) + math.sin(t) * (ys - cy)) / (2 * r), -1, 1)
    lit = np.asarray(mask.crop((x0, y0, x1, y1)), dtype=np.float32) / 255.0
    canvas[y0:y1, x0:x1] *= (1.0 + 0.25 * min(d, 2.0) * ramp * lit)[..., None]
    return canvas, 0.035 * d


def _render_sketch(rng, shape, color, d):
    canvas = np.full((_S, _S, 3), rng.uniform(0.88, 1.0), np.float32) + rng.normal(0, 0.015, 3).astype(np.float32)
    canvas = canvas + _smooth_noise(rng, 8, 0.03)
    for m, _ in _distractors(rng, d):  # pencil doodles in grey
        _paint(canvas, _outline(m, 3, False), np.full(3, rng.uniform(0.3, 0.6), np.float32))
    cx, cy, r, angle = _placement(rng, d, (0.22, 0.36))
    mask = _shape_mask(shape, cx, cy, r, angle)
    pen = _jitter_color(rng, color, d) * 0.85
    _paint(canvas, _outline(mask, int(rng.integers(4, 7)), False), pen)
    # light hatching inside the outline
    hatch = Image.new("L", (_S, _S), 0)
    draw = ImageDraw.Draw(hatch)
    for _ in range(int(rng.integers(0, 4))):
        x0, y0, x1, y1 = rng.uniform(0, _S, 4)
        draw.line([(x0, y0), (x1, y1)], fill=255, width=3)
    _paint(canvas, ImageChops.multiply(hatch, mask), pen, alpha=0.5)
    return canvas, 0.02 * d


def _render_cartoon(rng, shape, color, d):
    sky = 0.75 + 0.25 * rng.uniform(0, 1, 3).astype(np.float32)
    ground = 0.6 + 0.35 * rng.uniform(0, 1, 3).astype(np.float32)
    horizon = int(rng.uniform(0.55, 0.9) * _S)
    canvas = np.empty((_S, _S, 3), np.float32)
    canvas[:horizon], canvas[horizon:] = sky, ground
    black = np.zeros(3, np.float32)
    for m, c in _distractors(rng, d):
        _paint(canvas, m, np.asarray(_RGB[c], np.float32))
        _paint(canvas, _outline(m, 3, True), black)
    cx, cy, r, angle = _placement(rng, d, (0.2, 0.32))
    mask = _shape_mask(shape, cx, cy, r, angle)
    rgb = np.clip(np.asarray(_RGB[color], np.float32) * 1.05 + rng.normal(0, 0.03 * d, 3), 0, 1).astype(np.float32)
    _paint(canvas, mask, rgb)
    _paint(canvas, _outline(mask, 5, True), black)
    return canvas, 0.01 * d


def _strokes(rng, base: np.ndarray, n: int, spread: float, width: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", (_S, _S), tuple(int(255 * v) for v in np.clip(base, 0, 1)))
    draw = ImageDraw.Draw(img)
    for _ in range(n):
        x0, y0 = rng.uniform(0, _S, 2)
        a = rng.uniform(0, np.pi)
        length = rng.uniform(0.3, 0.8) * _S
        col = np.clip(base + rng.uniform(-spread, spread, 3), 0, 1)
        draw.line(
            [(x0, y0), (x0 + length * math.cos(a), y0 + length * math.sin(a))],
            fill=tuple(int(255 * v) for v in col),
            width=int(rng.integers(*width)),
        )
    return img


def _render_painting(rng, shape, color, d):
    bg = _strokes(rng, rng.uniform(0.3, 0.8, 3), int(rng.integers(8, 14)), 0.35, (10, 30))
    canvas = np.asarray(bg, dtype=np.float32) / 255.0
    for m, c in _distractors(rng, d):
        _paint(canvas, m, _jitter_color(rng, c, d))
    cx, cy, r, angle = _placement(rng, d, (0.2, 0.34))
    mask = _shape_mask(shape, cx, cy, r, angle)
    paint = np.asarray(_strokes(rng, _jitter_color(rng, color, d), 12, 0.12 * max(d, 0.5), (6, 16)), np.float32)
    _paint(canvas, mask, paint / 255.0)
    # warm, faded palette and soft brush edges
    sepia = canvas @ np.array([[0.39, 0.35, 0.27], [0.77, 0.69, 0.53], [0.19, 0.17, 0.13]], np.float32)
    canvas = np.clip(0.75 * canvas + 0.25 * sepia, 0, 1)
    blurred = Image.fromarray(np.round(canvas * 255).astype(np.uint8)).filter(ImageFilter.BoxBlur(3))
    return np.asarray(blurred, dtype=np.float32) / 255.0, 0.025 * d


def _render_night(rng, shape, color, d):
    canvas = np.array([0.03, 0.04, 0.10], np.float32) * rng.uniform(0.6, 1.6) + _smooth_noise(rng, 4, 0.04)
    for m, c in _distractors(rng, d):
        _paint(canvas, m, 0.35 * _jitter_color(rng, c, d))
    cx, cy, r, angle = _placement(rng, d, (0.2, 0.34))
    mask = _shape_mask(shape, cx, cy, r, angle)
    # dim, blue-shifted light: colours lose saturation and brightness
    rgb = 0.45 * _jitter_color(rng, color, d) + np.array([0.03, 0.05, 0.14], np.float32)
    _paint(canvas, mask, rgb)
    return canvas, 0.06 * d


_RENDERERS = {
    "photo": _render_photo,
    "sketch": _render_sketch,
    "cartoon": _render_cartoon,
    "painting": _render_painting,
    "night": _render_night,
}


def render_array(class_id: int, domain: str, rng: np.random.Generator, difficulty: float = 1.0) -> np.ndarray:
    """Like `render`, but returns the `(IMAGE_SIZE, IMAGE_SIZE, 3)` uint8 array."""
    if not 0 <= class_id < len(OBJECT_CLASSES):
        raise ValueError(f"`class_id` must be in [0, {len(OBJECT_CLASSES)}), got {class_id}")
    if domain not in _RENDERERS:
        raise ValueError(f"`domain` must be one of {list(DOMAINS)}, got {domain!r}")
    if not 0 <= difficulty <= 3:
        raise ValueError(f"`difficulty` must be in [0, 3], got {difficulty}")
    s, c = OBJECT_CLASSES[class_id]
    canvas, noise = _RENDERERS[domain](rng, SHAPES[s], COLORS[c], difficulty)
    img = canvas.reshape(IMAGE_SIZE, _SS, IMAGE_SIZE, _SS, 3).sum(1).sum(2) * (1.0 / _SS**2)
    img = img + rng.normal(0, noise, img.shape)
    return np.round(np.clip(img, 0, 1) * 255).astype(np.uint8)


def render(class_id: int, domain: str, rng: np.random.Generator, difficulty: float = 1.0) -> Image.Image:
    """Draw one RGB image of object class `class_id` (an index into `OBJECT_CLASSES` / `OBJECT_NAMES`).

    Args:
        class_id (`int`): object class; for the `shapes`/`colors` tasks pick it with `ToyTask.members`.
        domain (`str`): one of `DOMAINS`.
        rng (`np.random.Generator`): the only source of randomness (position, scale, rotation, colour jitter,
            background, clutter, noise); the same generator state gives the same pixels.
        difficulty (`float`, defaults to 1.0): scales clutter, noise, colour jitter, position and rotation
            ranges; 0 = centred, upright, clean shapes.

    Returns:
        `PIL.Image.Image` of size `IMAGE_SIZE` x `IMAGE_SIZE`, mode RGB.
    """
    return Image.fromarray(render_array(class_id, domain, rng, difficulty))
