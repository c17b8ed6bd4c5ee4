"""The miniatures' world (issue 19): a flat background with one object on it.

Everything the miniatures are trained on, and everything the eval and the tests read back,
follows from the tables below; the drawing (`picture`, `clip`) and the reading (`read`) live
here, outside the runtime package, so that farm itself never depends on them.

A prompt is exactly `a {colour} {shape} {place}, {background}` (270 in all). Motion: between a
first and a last picture of the same shape, the object travels in a straight line at constant
speed and its colour and the background cross-fade linearly; from a first picture alone, it
drifts towards the middle at 0.1 W per second and stays once there.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

BACKGROUNDS = {
    "blue sky": (110, 170, 235),
    "night sky": (20, 25, 70),
    "sunset": (245, 150, 90),
    "grass": (80, 170, 80),
    "sand": (225, 205, 150),
}
COLOURS = {
    "red": (215, 35, 35),
    "yellow": (245, 220, 40),
    "green": (30, 120, 40),
    "blue": (40, 70, 200),
    "purple": (140, 50, 170),
    "white": (245, 245, 245),
}
SHAPES = ("ball", "box", "triangle")
# The object's centre x, as a fraction of the width.
PLACES = {"on the left": 0.22, "in the middle": 0.50, "on the right": 0.78}
DRIFT = 0.1  # W per second, towards the middle, when a clip has no last picture
FPS = 16

_PROMPT = re.compile(r"a (\w+) (\w+) (on the left|in the middle|on the right), (.+)")


@dataclass(frozen=True)
class Scene:
    colour: str
    shape: str
    place: str
    background: str

    @property
    def prompt(self) -> str:
        return f"a {self.colour} {self.shape} {self.place}, {self.background}"


def prompts() -> list[str]:
    """The 270 prompts of the world, in a fixed order."""
    return [Scene(c, s, p, b).prompt for b, c, s, p in itertools.product(BACKGROUNDS, COLOURS, SHAPES, PLACES)]


def parse(prompt: str) -> Scene:
    m = _PROMPT.fullmatch(prompt.strip())
    if not m or m[1] not in COLOURS or m[2] not in SHAPES or m[4] not in BACKGROUNDS:
        raise ValueError(f"not a prompt of the world: {prompt!r}")
    return Scene(m[1], m[2], m[3], m[4])


_SS = 4  # drawn at 4x and box-filtered down, so an object can sit between pixels


def _draw(background, colour, shape: str, cx: float, W: int, H: int) -> Image.Image:
    """One frame: `cx` the object's centre x in pixels; colours as RGB tuples (floats allowed)."""
    s = _SS
    img = Image.new("RGB", (W * s, H * s), tuple(int(round(v)) for v in background))
    d = ImageDraw.Draw(img)
    fill = tuple(int(round(v)) for v in colour)
    x, y = cx * s, H / 2 * s
    if shape == "ball":
        r = 0.15 * H * s
        d.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif shape == "box":
        h = 0.135 * H * s
        d.rectangle([x - h, y - h, x + h, y + h], fill=fill)
    else:  # apex up, base 0.34 H, height 0.30 H, centred on its bounding box
        b, t = 0.17 * H * s, 0.15 * H * s
        d.polygon([(x - b, y + t), (x + b, y + t), (x, y - t)], fill=fill)
    return img.resize((W, H), Image.BOX)


def picture(prompt: str, W: int = 64, H: int = 64) -> Image.Image:
    """The picture a prompt describes, W x H."""
    sc = parse(prompt)
    return _draw(BACKGROUNDS[sc.background], COLOURS[sc.colour], sc.shape, PLACES[sc.place] * W, W, H)


def path(first: str, last: str | None, frames: int, fps: float = FPS, W: int = 64) -> list[float]:
    """The object's centre x (pixels) in each frame of a clip."""
    a = parse(first)
    x0 = PLACES[a.place] * W
    if last is not None:
        x1 = PLACES[parse(last).place] * W
        return [x0 + (x1 - x0) * i / max(1, frames - 1) for i in range(frames)]
    mid = 0.5 * W
    return [x0 + np.sign(mid - x0) * min(DRIFT * W * i / fps, abs(mid - x0)) for i in range(frames)]


def clip(first: str, last: str | None, frames: int, fps: float = FPS, W: int = 64, H: int = 64) -> list[Image.Image]:
    """A clip of `frames` frames from the first prompt's picture (to the last's, if given)."""
    a = parse(first)
    b = parse(last) if last is not None else a
    if b.shape != a.shape:
        raise ValueError(f"a clip keeps its shape: {a.shape} -> {b.shape}")
    xs = path(first, last, frames, fps, W)
    out = []
    for i, x in enumerate(xs):
        t = i / max(1, frames - 1) if last is not None else 0.0
        mix = lambda p, q, t=t: tuple((1 - t) * u + t * v for u, v in zip(p, q))  # noqa: E731
        out.append(_draw(mix(BACKGROUNDS[a.background], BACKGROUNDS[b.background]),
                         mix(COLOURS[a.colour], COLOURS[b.colour]), a.shape, x, W, H))
    return out


# --- reading a frame back -----------------------------------------------------------------


@dataclass(frozen=True)
class Reading:
    background: str
    colour: str | None  # None: no object found
    shape: str | None
    place: str | None
    x: float | None  # centroid x / W
    fill: float | None
    area: float  # the object's pixels / the expected area of a ball

    @property
    def present(self) -> bool:
        return self.colour is not None

    def matches(self, prompt: str) -> dict[str, bool]:
        sc = parse(prompt)
        return {"background": self.background == sc.background, "colour": self.colour == sc.colour,
                "shape": self.shape == sc.shape, "place": self.place == sc.place}


def _nearest(rgb, table: dict) -> str:
    return min(table, key=lambda k: sum((float(a) - b) ** 2 for a, b in zip(rgb, table[k])))


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (stray pixels of a model's picture
    would otherwise widen the bounding box)."""
    H, W = mask.shape
    label = np.zeros((H, W), dtype=np.int32)
    best, best_n, n = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if label[y0, x0]:
            continue
        n += 1
        label[y0, x0] = n
        stack, count = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            count += 1
            for yy, xx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= yy < H and 0 <= xx < W and mask[yy, xx] and not label[yy, xx]:
                    label[yy, xx] = n
                    stack.append((yy, xx))
        if count > best_n:
            best, best_n = n, count
    return label == best if best else mask


@lru_cache(maxsize=4096)
def _template(shape: str, cx: float, W: int, H: int) -> np.ndarray:
    """The coverage (0..1) of `shape` drawn at centre x `cx` as the world draws it (cached, so
    read-only)."""
    t = np.asarray(_draw((0, 0, 0), (255, 255, 255), shape, cx, W, H), dtype=np.float32)[..., 0] / 255.0
    t.flags.writeable = False
    return t


def _overlap(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.minimum(a, b).sum() / max(1e-6, np.maximum(a, b).sum()))


def read(frame) -> Reading:
    """Read a frame (PIL image or H x W x 3 uint8 array) back into the world's terms:
    background = the nearest fill to the border's median colour; the object = the largest
    region of pixels far (> 40 RGB units, half the closest object/background pair) from the
    border's colour; its colour = the nearest to the median of its inner pixels; its shape = the
    one whose drawing, at the object's own centre, overlaps its coverage most (soft intersection
    over union); its place by its centroid x.

    Shapes used to be told by the fill ratio of the bounding box (circle 0.785, square 1.0,
    triangle 0.5), but a model's slightly soft edges round a triangle's corners and move its
    ratio towards a ball's (at a Gaussian blur of 1.5 px every triangle of the world read as a
    ball); the overlap still tells them apart. The fill ratio is kept in the reading for reports."""
    a = np.asarray(frame.convert("RGB") if isinstance(frame, Image.Image) else frame).astype(np.float32)
    H, W, _ = a.shape
    border = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg_rgb = np.median(border, axis=0)
    background = _nearest(bg_rgb, BACKGROUNDS)
    far = np.sqrt(((a - bg_rgb) ** 2).sum(-1))
    mask = far > 40
    ball = np.pi * (0.15 * H) ** 2
    if mask.sum() < 0.2 * ball:
        return Reading(background, None, None, None, None, None, float(mask.sum() / ball))
    mask = _largest_component(mask)
    area = float(mask.sum())
    if area < 0.2 * ball:
        return Reading(background, None, None, None, None, None, area / ball)
    # colour from the pixels farthest from the background (edges are blends)
    inner = mask & (far >= np.percentile(far[mask], 50))
    colour = _nearest(np.median(a[inner], axis=0), COLOURS)
    # coverage: edge pixels are blends, counted by how far they are from the background
    weight = np.clip(far / max(1.0, float(np.percentile(far[mask], 90))), 0, 1) * mask
    total = float(weight.sum())
    # the bounding box from the widest row and the tallest column, in covered pixels, so
    # anti-aliased edges count for what they cover
    fill = total / max(1e-6, float(weight.sum(1).max() * weight.sum(0).max()))
    x = float((weight.sum(0) * (np.arange(W) + 0.5)).sum() / total) / W
    shape = max(SHAPES, key=lambda s: _overlap(weight, _template(s, round(x * W * _SS) / _SS, W, H)))
    place = min(PLACES, key=lambda p: abs(PLACES[p] - x))
    return Reading(background, colour, shape, place, x, fill, area / ball)
