"""The records a family is made of: `Family` and its `Shape`, `Time`, `Memory` and `Twin`
(farm/models/families/__init__.py holds the registry; each family module fills one `Family`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

ROLES = ("keyframes", "motion")
# How a family takes a segment's keyframes (motion families) or none (text-to-image).
CONDITIONING = ("prompt only", "first and last frame", "first frame only", "keyframe conditions")


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


@dataclass(frozen=True)
class Time:
    """A motion family's time: frames are `offset + step * k`; `fps` the rate it was trained
    at and `window` the most frames one call makes (a preset's `fps` / `max_frames` override
    these; a family whose versions differ says so in its `native_time`). `section`: latent
    frames per step of the rule, 1 for a model that denoises a whole clip at once (a step is
    one latent frame, or one temporal patch of them); more for a call that packs its video in
    sections itself (FramePack: one step is one section of 9 latent frames), whose window is
    the longest video one call is known to make rather than a trained clip length."""

    step: int
    offset: int
    fps: float
    window: int
    section: int = 1

    def valid(self, n: int) -> bool:
        return n > self.offset and (n - self.offset) % self.step == 0


@dataclass(frozen=True)
class Memory:
    """farm/models/fit.py's rule. spatial/temporal: the VAE's compression; patch: the denoiser's
    (t, h, w) patch; decode_frames: output frames the VAE decodes at once (0: all);
    tiled_frames: ... when tiled (None: as untiled); tile: the default tile side in pixels when
    the VAE's config does not say. token_bytes / decode_bytes / ref_params / ref_vae: the rule
    of the family's preset, used for a model without a [fit] table, scaled by the square root
    of its denoiser's (and VAE's) size against ref_params (ref_vae), in billions. experts: how
    many denoisers share the work, one running at a time (their size is divided by it).
    section_frames: for a call that packs its video in sections (FramePack), the frames whose
    latent tokens one denoiser call sees, whatever the clip's length (0: the whole clip's)."""

    spatial: int
    temporal: int
    patch: tuple[int, int, int]
    decode_frames: int
    tile: int
    token_bytes: float
    decode_bytes: float
    ref_params: float
    ref_vae: float
    tiled_frames: int | None = None
    experts: int = 1
    section_frames: int = 0


@dataclass(frozen=True)
class Twin:
    """The family's tiny random-weight miniature: `builder` is its builder (the family module's
    `build_twin`, which imports torch and diffusers only when called; the components several
    twins share are in farm/models/twins.py), called with `shapes` (the denoiser settings that
    decide which sizes and frame counts it accepts, which farm/models/timing.py reads without
    building it); `recipe` is its `builtin:` name and `version` goes into task keys (bump it
    when the builder changes what it builds)."""

    recipe: str
    builder: Callable[[dict], object]
    shapes: dict = field(default_factory=dict, hash=False)
    version: int = 1

    def build(self):
        """The twin's pipeline, built from a fixed seed."""
        return self.builder(dict(self.shapes))


def first_frame(params, first, last, generated):
    """The adapter of a first-frame family: `image` alone; the segment moves away from its
    keyframe, then cuts to the next."""
    return {"image": first}


def first_and_last_frame(params, first, last, generated):
    """The adapter of a family whose call takes `image` and `last_image` (no end frame for a
    clip that runs free)."""
    return {"image": first, "last_image": last}


def embedded_guidance(params: dict) -> dict:
    """The guidance of a guidance-distilled family: `guidance_scale` is the transformer's input,
    and the call takes no negative prompt (validation refuses one: `negative=False`)."""
    return {"guidance_scale": params["guidance"]}


def plain_guidance(params: dict) -> dict:
    """How most pipelines take a call's guidance and negative prompt (none: None)."""
    return {"guidance_scale": params["guidance"], "negative_prompt": params["negative_prompt"] or None}


@dataclass(frozen=True)
class Family:
    """Everything farm knows of one model family. `shape(config)` gives its size and frame
    rules from its denoiser's config ({} when unknown: the family's defaults); for a motion
    family `time` is its frame rule, rate and window, `native_time(config)` the rate and window
    of the version that config describes, `adapter(params, first, last, frames)` the keyword
    arguments that condition one call on its keyframes, and `around(pipe, last)` an optional
    context the call runs in. `requires`: components that tell this family from another of the
    same pipeline class (Wan 2.2's second expert); `requires_config`: values of the pipeline's
    own config (model_index.json's settings beside its components, or a loaded pipeline's
    `config`) that do (Wan 2.2 TI2V-5B's `expand_timesteps`). `guidance(params)`: the keyword arguments
    that carry a call's guidance and negative prompt, for a family whose call does not take
    them as `guidance_scale` and `negative_prompt` (None: those two, as the spec gives them;
    `plain_guidance`). `negative`: whether its call takes a negative prompt at all, as farm
    calls it (FramePack's takes one that counts only with true CFG, which farm leaves off: none;
    a spec that gives one to a family that takes none is refused at validation).
    `call_frames(frames)`: the call's `num_frames` that makes it return `frames` frames, for a
    family whose call returns another count than it is asked (FramePack: whole sections; None:
    `frames` itself; farm still checks that the call returned `frames`). `sound(pipe,
    output)`, for a family whose calls make sound too: the call's soundtrack from the
    pipeline's output, as (a float array (channels, samples) in [-1, 1], its sample rate in
    Hz); None for a silent family."""

    name: str
    pipeline: str
    role: str
    conditioning: str
    multiple_of: int
    shape: Callable[[dict], Shape]
    memory: Memory
    denoisers: tuple[str, ...]
    twin: Twin
    time: Time | None = None
    native_time: Callable[[dict], tuple[float, int]] | None = None
    adapter: Callable | None = None
    around: Callable | None = None
    requires: tuple[str, ...] = ()
    guidance: Callable[[dict], dict] | None = None
    negative: bool = True
    requires_config: dict = field(default_factory=dict, hash=False)
    call_frames: Callable[[int], int] | None = None
    sound: Callable | None = None

    @property
    def makes_sound(self) -> bool:
        """Whether each call returns a soundtrack with its frames."""
        return self.sound is not None

    @property
    def ends(self) -> bool:
        """Whether a call takes an end frame as well as a first one."""
        return self.conditioning in ("first and last frame", "keyframe conditions")

    def guidance_call(self, params: dict) -> dict:
        """The keyword arguments that carry the call's guidance and negative prompt."""
        return (self.guidance or plain_guidance)(params)

    def num_frames(self, frames: int) -> int:
        """The `num_frames` a call is given to make `frames` frames."""
        return self.call_frames(frames) if self.call_frames else frames

    def fps_window(self, config: dict) -> tuple[float, int]:
        if self.native_time is not None:
            return self.native_time(config)
        return (self.time.fps, self.time.window) if self.time else (24, 1 << 30)
