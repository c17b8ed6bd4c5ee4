"""Time: each motion model's frame rate, window and frame rule; segments as chains of clips;
retiming to the shot's rate; and the sizes and frame counts each family can generate.

A video model was trained at one frame rate (`fps`, Wan 2.1: 16) on clips of at most a few
seconds (`max_frames`, Wan 2.1: 81). farm generates a segment of `s` seconds at the model's
rate, about `s x fps` frames of motion, rounded to the family's frame rule (4k+1, 8k+1). A
segment longer than the window becomes a chain of clips, each at most `max_frames`: the
first starts at the segment's keyframe, each next one continues from the last frame of the
one before, and the last one of a first/last-frame family ends on the next keyframe. The
frames are then retimed to the shot's fps (`retime`: ffmpeg's motion-compensated
`minterpolate`, its blending `framerate`, or the nearest frame), so motion plays at the speed
the model drew it.

Worked example (docs/time.md's): a 12 s segment at 24 fps on Wan 2.1 (16 fps, 81 frames,
4k+1) is 12 x 16 = 192 frames of motion plus the next keyframe, 193; at most 20 steps of 4
frames fit one 81-frame window, so 48 steps make 3 clips of 16 steps, 65 frames each (each
next clip starts on the last frame of the one before: 3 x 65 - 2 = 193), retimed to
12 x 24 = 288 frames.

Everything here is arithmetic on the ModelRef and the denoiser's config (read from the
model's folder, or for a built-in twin from its family's twin shapes, without building it;
the rules themselves are each family's, in farm/models/families/): spec validation calls
`size_problems()` and `window_problems()`, the plan calls `segment()`, the worker calls
`retime_plan()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from .. import files
from ..errors import FarmError
from . import families
from .families import Shape

RETIME = ("interpolate", "blend", "nearest")  # the first is the default
DEFAULT_RETIME = RETIME[0]


def denoiser_config(ref) -> dict:
    """The denoiser's config: its family twin's shapes for a built-in twin, else its folder's
    transformer/config.json (or unet/), else {} (the family's defaults apply)."""
    if ref.source.startswith("builtin:"):
        fam = families.of_twin(ref.source.split(":", 1)[1])
        return dict(fam.twin.shapes) if fam else {}
    folder = Path(ref.config) if ref.config else Path(ref.source)
    return _read_config(str(folder))


@lru_cache(maxsize=64)
def _read_config(folder: str) -> dict:
    for part in ("transformer", "unet"):
        path = Path(folder) / part / "config.json"
        if path.is_file():
            try:
                return files.read_json(path)
            except (OSError, ValueError, FarmError):
                return {}
    return {}


def family_of(ref) -> families.Family | None:
    """The family of a ModelRef: its twin's for a built-in one, else its pipeline class's, told
    apart by its folder's model_index.json (the components it holds, Wan 2.2's second expert,
    and its pipeline's settings, Wan 2.2 TI2V-5B's `expand_timesteps`)."""
    if ref.source.startswith("builtin:"):
        return families.of_twin(ref.source.split(":", 1)[1]) or families.family(ref.pipeline)
    folder = Path(ref.config) if ref.config else Path(ref.source)
    return families.of_index(ref.pipeline, _index(str(folder)))


@lru_cache(maxsize=64)
def _index(folder: str) -> dict:
    try:
        index = files.read_json(Path(folder) / "model_index.json")
    except (OSError, ValueError, FarmError):
        return {}
    return index if isinstance(index, dict) else {}


def shape(ref) -> Shape:
    """The family's rules, with the limits its denoiser's config sets."""
    fam = family_of(ref)
    if fam is None:
        return Shape(ref.pipeline, multiple=8)
    return fam.shape(denoiser_config(ref))


def model_time(ref) -> tuple[float, int]:
    """(fps, max_frames) of a motion model: its preset's, else its family's (for its version)."""
    fps, window = ref.defaults.get("fps"), ref.defaults.get("max_frames")
    if fps is None or window is None:
        fam = family_of(ref)
        default = fam.fps_window(denoiser_config(ref)) if fam else (24, 1 << 30)
        fps = default[0] if fps is None else fps
        window = default[1] if window is None else window
    return float(fps), int(window)


@dataclass(frozen=True)
class SegmentTime:
    """How a segment of `frames` shot frames (`seconds` long) is generated: `clips` frame
    counts at `fps` (the model's rate), each within its window, each next one starting on the
    last frame of the one before; `native` frames of motion in all (with the next keyframe
    when `ends`); `rate` is the exact rate those frames span the segment at (fps, unless the
    frame rule rounded the count)."""

    frames: int
    seconds: Fraction
    fps: float
    clips: tuple[int, ...]
    ends: bool

    @property
    def native(self) -> int:
        return sum(self.clips) - (len(self.clips) - 1)

    @property
    def rate(self) -> Fraction:
        # With an end frame, native frame i sits at i / rate and the last one is the next
        # keyframe, at the segment's end; without, all `native` frames lie within it.
        return Fraction(self.native - 1 if self.ends else self.native) / self.seconds


def segment(ref, frames: int, shot_fps: float, ends: bool | None = None) -> SegmentTime:
    """Split a segment of `frames` frames at `shot_fps` into clips at the model's rate."""
    fps, window = model_time(ref)
    rule = shape(ref)
    ends = rule.ends if ends is None else ends
    seconds = Fraction(frames) / _fraction(shot_fps)
    motion = max(1, round(seconds * _fraction(fps)))  # frames of motion at the model's rate
    total = motion + 1 if ends else motion  # ... and the next keyframe, for end-frame families
    # Round to the rule: total = offset + step * units (at least one step: a clip is video).
    units = max(1, round(Fraction(total - rule.offset, rule.step)))
    per_clip = max(1, (window - rule.offset) // rule.step)
    count = math.ceil(units / per_clip)
    base, extra = divmod(units, count)
    # each clip but the first starts on the previous clip's last frame, so clips share frames
    # and every clip has offset + step * its units frames.
    clips = tuple(rule.offset + rule.step * (base + (1 if i < extra else 0)) for i in range(count))
    return SegmentTime(frames, seconds, fps, clips, ends)


def _fraction(x: float) -> Fraction:
    return Fraction(x).limit_denominator(1001)  # 23.976 -> 24000/1001


def rational(x) -> str:
    """A rate as ffmpeg reads it: "16", "24000/1001", "33/2"."""
    f = Fraction(x) if isinstance(x, (str, Fraction)) else _fraction(x)
    return str(f.numerator) if f.denominator == 1 else f"{f.numerator}/{f.denominator}"


def retime_plan(native: int, rate: Fraction | str, frames: int, shot_fps: float) -> list[float]:
    """The native time index (in frames at `rate`) of each of the `frames` shot frames."""
    rate = Fraction(rate)
    fps = _fraction(shot_fps)
    return [min(float(Fraction(k) / fps * rate), native - 1) for k in range(frames)]


def nearest(native: int, rate, frames: int, shot_fps: float) -> list[int]:
    """`retime = "nearest"`: the native frame closest in time to each shot frame."""
    return [min(round(t), native - 1) for t in retime_plan(native, rate, frames, shot_fps)]


def is_identity(native: int, rate, frames: int, shot_fps: float) -> bool:
    """Whether the shot's frames are exactly the first native frames (same rate)."""
    return Fraction(rate) == _fraction(shot_fps) and native >= frames


# --- validation ---------------------------------------------------------------------------


def size_problems(ref, width: int, height: int) -> list[str]:
    """Why `ref` cannot generate width x height, with the nearest sizes it can; [] when it can."""
    rule = shape(ref)
    name = f"{ref.name} ({ref.pipeline})"
    out = []
    if rule.fixed and (width, height) != rule.fixed:
        w, h = rule.fixed
        out.append(f"{name} generates exactly {w}x{h} (learned position embeddings), got {width}x{height}")
        return out
    bad = []
    if width % rule.multiple or height % rule.multiple:
        bad.append(f"width and height that are multiples of {rule.multiple}")
    if width < rule.min_side or height < rule.min_side:
        bad.append(f"sides of at least {rule.min_side}")
    if (rule.max_width and width > rule.max_width) or (rule.max_height and height > rule.max_height):
        bad.append(f"at most {rule.max_width}x{rule.max_height} ({rule.why_max})")
    if bad:
        near = _nearest_sizes(rule, width, height)
        out.append(f"{name} needs {' and '.join(bad)}, got {width}x{height}; nearest valid: "
                   + " or ".join(f"{w}x{h}" for w, h in near))
    return out


def window_problems(ref) -> list[str]:
    """Why a motion model's window (`max_frames`) cannot be generated; [] when it can."""
    rule = shape(ref)
    name = f"{ref.name} ({ref.pipeline})"
    out = []
    if ref.role == "motion":
        fps, window = model_time(ref)
        if not rule.valid_frames(window):
            lo = rule.offset + rule.step * max(1, (window - rule.offset) // rule.step)
            out.append(f"{name}: max_frames {window} breaks the family's frame rule "
                       f"({rule.step}k+{rule.offset}); nearest valid: {lo} or {lo + rule.step}")
        elif rule.max_frames and window > rule.max_frames:
            out.append(f"{name}: max_frames {window} is beyond what it can generate ({rule.max_frames}: "
                       f"{rule.why_max}); set max_frames to at most {rule.max_frames}")
    return out


def _nearest_sizes(rule: Shape, width: int, height: int) -> list[tuple[int, int]]:
    def candidates(side: int, top: int | None) -> list[int]:
        m = rule.multiple
        lo = max(rule.min_side, min(side // m * m, top // m * m if top else side))
        hi = max(rule.min_side, -(-side // m) * m)
        hi = min(hi, top // m * m) if top else hi
        lo = max(lo, -(-rule.min_side // m) * m)
        return sorted({lo, hi})

    ws, hs = candidates(width, rule.max_width), candidates(height, rule.max_height)
    sizes = sorted({(w, h) for w in ws for h in hs},  # closest first, then closest in aspect ratio
                   key=lambda s: (abs(s[0] - width) + abs(s[1] - height), abs(s[0] / s[1] - width / height), s))
    return sizes[:2]
