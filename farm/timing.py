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

Worked example (the README's): a 12 s segment at 24 fps on Wan 2.1 (16 fps, 81 frames,
4k+1) is 12 x 16 = 192 frames of motion plus the next keyframe, 193; at most 20 steps of 4
frames fit one 81-frame window, so 48 steps make 3 clips of 16 steps, 65 frames each (each
next clip starts on the last frame of the one before: 3 x 65 - 2 = 193), retimed to
12 x 24 = 288 frames.

Everything here is arithmetic on the ModelRef and the denoiser's config (read from the
model's folder, or for a built-in twin from `tiny.SHAPES`, without building it): spec
validation calls `problems()`, the plan calls `segment()`, the worker calls `retime_plan()`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from pathlib import Path

from . import files
from .errors import FarmError

RETIME = ("interpolate", "blend", "nearest")  # the first is the default
DEFAULT_RETIME = RETIME[0]

# What each family's own code says when a preset does not (a user's folder or hub id).
# Presets state them with their sources (presets/*.toml); these are the same numbers.
FAMILY_TIME = {
    "WanImageToVideoPipeline": (16, 81),  # Wan2.1/2.2 shared_config: sample_fps 16, frame_num 81
    "LTXConditionPipeline": (25, 257),  # diffusers' frame_rate default 25; model card: below 257 frames
    "CogVideoXImageToVideoPipeline": (16, 81),  # CogVideoX 1.5 model card: 16 fps, 5 s (81) or 10 s
}
COGVIDEOX_10_TIME = (8, 49)  # CogVideoX 1.0 (no temporal patching): 8 fps, 49 frames


@dataclass(frozen=True)
class Shape:
    """What a model can generate. Frames: `offset + step * k` (k >= 1 for video); sides: a
    multiple of `multiple`, at least `min_side`, at most `max_width` x `max_height` when its
    position embedding bounds them; `fixed` when it takes exactly one size; `max_frames` when
    its position embedding bounds the frame count; `ends`: conditioned on an end frame too."""

    family: str
    step: int = 1
    offset: int = 0
    multiple: int = 8
    min_side: int = 16
    max_width: int | None = None
    max_height: int | None = None
    max_frames: int | None = None
    fixed: tuple[int, int] | None = None
    ends: bool = False
    why_max: str = ""

    def valid_frames(self, n: int) -> bool:
        return n > self.offset and (n - self.offset) % self.step == 0


def denoiser_config(ref) -> dict:
    """The denoiser's config: from `tiny.SHAPES` for a built-in twin, else its folder's
    transformer/config.json (or unet/), else {} (the family's defaults apply)."""
    from . import tiny

    if ref.source.startswith("builtin:"):
        return dict(tiny.SHAPES.get(ref.source.split(":", 1)[1], {}))
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


def shape(ref) -> Shape:
    """The family's rules, with the limits its denoiser's config sets."""
    cfg = denoiser_config(ref)
    family = ref.pipeline
    if family == "WanImageToVideoPipeline":
        # VAE 8x spatial / 4x temporal (causal first frame: 4k+1), patch (1, 2, 2). Rotary
        # positions are precomputed for rope_max_seq_len steps on each axis (1024 in Wan 2.1).
        patch = cfg.get("patch_size", [1, 2, 2])
        rope = cfg.get("rope_max_seq_len", 1024)
        return Shape(family, step=4 * patch[0], offset=1, multiple=8 * patch[1], min_side=8 * patch[1],
                     max_width=8 * patch[2] * rope, max_height=8 * patch[1] * rope, max_frames=4 * (rope - 1) + 1,
                     ends=True, why_max=f"its rotary embedding covers {rope} positions per axis")
    if family == "LTXConditionPipeline":
        # VAE 32x spatial / 8x temporal: 8k+1 frames, a keyframe condition at latent frame boundaries.
        p, pt = cfg.get("patch_size", 1), cfg.get("patch_size_t", 1)
        return Shape(family, step=8 * pt, offset=1, multiple=32 * p, min_side=32 * p, ends=True)
    if family == "CogVideoXImageToVideoPipeline":
        # Without a config to read (weights not pulled): CogVideoX 1.5 as diffusers' conversion
        # script writes it (scripts/convert_cogvideox_to_diffusers.py: patch_size_t 2,
        # sample_width = sample_height = 300, so up to 2400 px a side).
        p, pt = cfg.get("patch_size", 2), cfg.get("patch_size_t", None if cfg else 2)
        sw, sh = cfg.get("sample_width", 300), cfg.get("sample_height", 300)
        if cfg.get("use_learned_positional_embeddings"):  # CogVideoX 1.0 I2V: one size only
            return Shape(family, step=4, offset=1, multiple=8 * p, min_side=8 * p, fixed=(8 * sw, 8 * sh))
        if pt is None:  # CogVideoX 1.0 with rotary positions: any size, resized crop of the grid
            return Shape(family, step=4, offset=1, multiple=8 * p, min_side=8 * p)
        # CogVideoX 1.5: temporal patches of pt latent frames, and its VAE decodes an even
        # latent count to 4L frames (5 asked -> 8 out): only an odd count gives 4k+1, so 8k+1.
        # Its rotary grid is a slice of one sample_width x sample_height grid: no wider.
        return Shape(family, step=8, offset=1, multiple=8 * p, min_side=8 * p, max_width=8 * sw, max_height=8 * sh,
                     why_max=f"its rotary position grid is a slice of {sw // p}x{sh // p} patches "
                             f"(sample_width {sw}, sample_height {sh})")
    if family == "StableDiffusion3Pipeline":
        p, pos = cfg.get("patch_size", 2), cfg.get("pos_embed_max_size", 192)
        return Shape(family, multiple=8 * p, max_width=8 * p * pos, max_height=8 * p * pos,
                     why_max=f"its position embedding holds {pos}x{pos} patches")
    if family == "FluxPipeline":
        return Shape(family, multiple=16)  # 8x VAE, latents packed 2x2
    return Shape(family, multiple=8)  # SD 1.x / SDXL UNets


def model_time(ref) -> tuple[float, int]:
    """(fps, max_frames) of a motion model: its preset's, else its family's."""
    fps, window = ref.defaults.get("fps"), ref.defaults.get("max_frames")
    if fps is None or window is None:
        default = FAMILY_TIME.get(ref.pipeline, (24, 1 << 30))
        if ref.pipeline == "CogVideoXImageToVideoPipeline" and denoiser_config(ref).get("patch_size_t") is None \
                and not ref.source.startswith("builtin:") and denoiser_config(ref):
            default = COGVIDEOX_10_TIME
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


def problems(ref, width: int, height: int) -> list[str]:
    """Why `ref` cannot generate width x height, and for a motion model why its window
    breaks its frame rule: `size_problems` + `window_problems`."""
    return size_problems(ref, width, height) + window_problems(ref)


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
