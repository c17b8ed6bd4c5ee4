"""The tasks: one frozen record per kind, built by the plan, stored in the queue as JSON, read
by the worker, the Ray driver, fit, `farm plan`, the manifest, the contact sheet and review.

Each record owns three things: the inputs to its key (`key_inputs()`, hashed by `key()`), its
stored form (`to_json()`, versioned by FORMAT; `load(kind, data)` reads it back) and what
farm/models/fit.py needs to know of it (`model`, `shape`). The kind of a stored task is the queue's
`kind` column (and a manifest entry's "kind"), never guessed from the keys its JSON holds.

Keys must not move: a task key is the hash of its inputs exactly as plan.py made them before
these records existed (tests/test_keys.py pins them), so `key_inputs()` reproduces those dicts
field for field, and a field added later enters them only when set.

Stored forms. FORMAT 1 is the params dict queues held before it, plus `"format": 1` and, for a
segment, its `"form"`. Queues and manifests written before FORMAT 1 hold that dict without them;
`load` reads it (the one place where a segment's form is told by the keys present).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

FORMAT = 1  # of the stored form; bump when a field changes meaning, and keep reading the old

# Bump a kind's version when the code that makes its output changes what it makes.
# segment 2: generated at the model's frame rate and retimed to the shot's (farm/models/timing.py).
VERSIONS = {"keyframe": 1, "segment": 2, "clip": 1, "assemble": 1}


def task_key(kind: str, inputs: dict) -> str:
    blob = json.dumps({"kind": kind, "version": VERSIONS[kind], **inputs}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


class TaskFormatError(ValueError):
    """A stored task that is not one farm can read (a newer format, or a damaged row)."""


# --- the model block --------------------------------------------------------------------------


@dataclass(frozen=True)
class Lora:
    path: str  # where to load it from (not in keys: moving the file changes nothing drawn)
    sha256: str
    scale: float
    into: str | None = None  # the denoiser it loads into (a preset's LoRA may name one); in keys when set

    def key_inputs(self) -> dict:
        out = {"sha256": self.sha256, "scale": self.scale}
        if self.into:
            out["into"] = self.into
        return out


@dataclass(frozen=True)
class Model:
    """A model as a task holds it: what determines pixels (in its key) and where and how to
    load it (not in its key: moving a folder, renaming a preset or offloading to the CPU does not
    change what the model draws). Optional fields enter keys only when set, so keys made before
    they existed stay valid."""

    identity: str
    pipeline: str
    dtype: str | None = None
    options: dict = field(default_factory=dict)  # extra keyword arguments of the pipeline call
    scheduler: str | None = None
    loras: tuple[Lora, ...] = ()
    quantize: str | None = None
    accelerate: tuple[str, ...] = ()
    cache_threshold: float | None = None  # set when accelerate has "cache"
    taylorseer: tuple[int, int] | None = None  # set when accelerate has "taylorseer"
    # where and how to load it
    name: str = ""
    source: str = ""
    memory: dict = field(default_factory=dict)
    config: str | None = None
    component: str | None = None
    trust_remote_code: bool = False

    def key_inputs(self) -> dict:
        out = {"identity": self.identity, "pipeline": self.pipeline, "dtype": self.dtype, "options": self.options}
        if self.scheduler:
            out["scheduler"] = self.scheduler
        if self.loras:
            out["loras"] = [lo.key_inputs() for lo in self.loras]
        if self.quantize:
            out["quantize"] = self.quantize
        if self.accelerate:  # fused kernels round differently, compiled graphs reorder sums, the cache skips blocks
            out["accelerate"] = list(self.accelerate)
            if "cache" in self.accelerate:
                out["cache_threshold"] = self.cache_threshold
            if "taylorseer" in self.accelerate:  # its fixed schedule changes pixels too
                out["taylorseer"] = list(self.taylorseer)
        return out

    def to_json(self) -> dict:
        out = {**self.key_inputs(), "name": self.name, "source": self.source, "memory": self.memory,
               "config": self.config, "component": self.component}
        if self.loras:
            out["loras"] = [{"path": lo.path, **lo.key_inputs()} for lo in self.loras]
        if self.trust_remote_code:
            out["trust_remote_code"] = True
        return out

    @classmethod
    def from_json(cls, d: dict) -> Model:
        return cls(identity=d["identity"], pipeline=d["pipeline"], dtype=d.get("dtype"), options=d.get("options") or {},
                   scheduler=d.get("scheduler"),
                   loras=tuple(Lora(lo.get("path", ""), lo["sha256"], lo["scale"], lo.get("into"))
                               for lo in d.get("loras") or ()),
                   quantize=d.get("quantize"), accelerate=tuple(d.get("accelerate") or ()),
                   cache_threshold=d.get("cache_threshold"),
                   taylorseer=tuple(d["taylorseer"]) if d.get("taylorseer") is not None else None,
                   name=d.get("name", ""), source=d.get("source", ""), memory=d.get("memory") or {},
                   config=d.get("config"), component=d.get("component"),
                   trust_remote_code=bool(d.get("trust_remote_code", False)))


# --- the kinds --------------------------------------------------------------------------------


class _Task:
    kind: str
    model: Model | None

    def key_inputs(self) -> dict:
        raise NotImplementedError

    def key(self) -> str:
        return task_key(self.kind, self.key_inputs())

    def to_json(self) -> dict:
        raise NotImplementedError

    @property
    def identity(self) -> str | None:
        """The identity of the model it loads (None for ffmpeg-only tasks): what claims match."""
        return self.model.identity if self.model is not None else None


@dataclass(frozen=True)
class Keyframe(_Task):
    """One keyframe: drawn by a text-to-image model, or a picture fitted to the shot (`image`)."""

    kind = "keyframe"
    frame: int  # its panel: frames[frame] of the spec
    width: int
    height: int
    image: str | None = None  # a picture keyframe: its path and the digest of its bytes
    image_sha256: str | None = None
    model: Model | None = None  # a drawn keyframe: the model and its call
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None

    @property
    def shape(self) -> tuple[int, int, int]:
        """(width, height, frames the model generates in one call): what farm/models/fit.py sizes."""
        return self.width, self.height, 1

    def key_inputs(self) -> dict:
        size = {"width": self.width, "height": self.height}
        if self.image is not None:
            return {"image_sha256": self.image_sha256, **size}
        return {"model": self.model.key_inputs(), "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "seed": self.seed, "steps": self.steps, "guidance": self.guidance, **size}

    def to_json(self) -> dict:
        if self.image is not None:
            return {"format": FORMAT, "frame": self.frame, "image": self.image, **self.key_inputs()}
        return {"format": FORMAT, "frame": self.frame, **self.key_inputs(), "model": self.model.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> Keyframe:
        if d.get("image") is not None:  # a picture keyframe holds no model
            return cls(d["frame"], d["width"], d["height"], image=d["image"], image_sha256=d["image_sha256"])
        return cls(d["frame"], d["width"], d["height"], model=Model.from_json(d["model"]), prompt=d["prompt"],
                   negative_prompt=d["negative_prompt"], seed=d["seed"], steps=d["steps"], guidance=d["guidance"])


@dataclass(frozen=True)
class Clip(_Task):
    """One clip of a chain: from the segment's keyframe or the previous clip's last frame
    (`start`, a task key), towards `end` (the next keyframe's key) when it is the last clip of a
    first/last-frame family."""

    kind = "clip"
    frame: int
    clip: int  # its place in the chain
    model: Model
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    model_fps: float
    width: int
    height: int
    frames: int  # generated, at the model's rate
    start: str
    start_is_clip: bool
    end: str | None

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.width, self.height, self.frames

    def key_inputs(self) -> dict:
        return {"model": self.model.key_inputs(), "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "steps": self.steps, "guidance": self.guidance, "model_fps": self.model_fps, "width": self.width,
                "height": self.height, "start": self.start, "start_is_clip": self.start_is_clip, "end": self.end,
                "frames": self.frames, "clip": self.clip, "seed": self.seed}

    def to_json(self) -> dict:
        return {"format": FORMAT, "frame": self.frame, **self.key_inputs(), "model": self.model.to_json()}

    @classmethod
    def from_json(cls, d: dict) -> Clip:
        return cls(d["frame"], d["clip"], Model.from_json(d["model"]), d["prompt"], d["negative_prompt"], d["seed"],
                   d["steps"], d["guidance"], d["model_fps"], d["width"], d["height"], d["frames"], d["start"],
                   d["start_is_clip"], d["end"])


# A segment's forms: an ffmpeg animatic at the shot's rate; one clip made by the segment itself
# at the model's rate, retimed; the retiming of a chain of clip tasks (which loads no model).
ANIMATIC, ONE_CLIP, CHAIN = "animatic", "one-clip", "chain"


@dataclass(frozen=True)
class Segment(_Task):
    """The frames of one panel, from its keyframe (`first`) towards the next one (`last`;
    None for the last panel), `frames` of them at the shot's `fps`."""

    kind = "segment"
    form: str  # ANIMATIC, ONE_CLIP or CHAIN
    frame: int
    frames: int
    fps: float
    width: int
    height: int
    first: str | None = None  # keyframe keys (a chain's segment reads its clips instead)
    last: str | None = None
    mode: str | None = None  # an animatic's: "hold" or "crossfade"
    # one clip: the model and its call
    model: Model | None = None
    prompt: str | None = None
    negative_prompt: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    # motion (one clip or a chain): the clips at the model's rate and how they become the shot's frames
    clips: tuple[int, ...] = ()
    native: int | None = None  # frames at the model's rate, all clips together
    rate: str | None = None  # the model's rate, as a fraction ("16", "30000/1001")
    ends: bool | None = None  # a first/last-frame family: the last clip ends on the next keyframe
    model_fps: float | None = None
    retime: str | None = None  # interpolate, blend or nearest
    clip_keys: tuple[str, ...] = ()  # a chain's clip tasks, in order

    @property
    def shape(self) -> tuple[int, int, int]:
        """Frames at the model's rate, per call (a chain's segment loads no model: its clips do)."""
        return self.width, self.height, max(self.clips)

    def key_inputs(self) -> dict:
        size = {"width": self.width, "height": self.height}
        if self.form == ANIMATIC:
            return {"first": self.first, "last": self.last, "frames": self.frames, "fps": self.fps, **size,
                    "mode": self.mode}
        retime = {"clips": list(self.clips), "native": self.native, "rate": self.rate, "ends": self.ends,
                  "model_fps": self.model_fps, "retime": self.retime}
        if self.form == CHAIN:
            return {"frames": self.frames, "fps": self.fps, **size, **retime, "clip_keys": list(self.clip_keys)}
        return {"first": self.first, "last": self.last, "frames": self.frames, "fps": self.fps, **size,
                "model": self.model.key_inputs(), "prompt": self.prompt, "negative_prompt": self.negative_prompt,
                "steps": self.steps, "guidance": self.guidance, "seed": self.seed, **retime}

    def to_json(self) -> dict:
        out = {"format": FORMAT, "form": self.form, "frame": self.frame, **self.key_inputs()}
        if self.model is not None:
            out["model"] = self.model.to_json()
        return out

    @classmethod
    def from_json(cls, d: dict) -> Segment:
        form = d.get("form") or (ANIMATIC if "mode" in d else CHAIN if "clip_keys" in d else ONE_CLIP)
        if form not in (ANIMATIC, ONE_CLIP, CHAIN):
            raise TaskFormatError(f"a segment of unknown form {form!r}")
        common = {"frame": d["frame"], "frames": d["frames"], "fps": d["fps"], "width": d["width"],
                  "height": d["height"]}
        if form == ANIMATIC:
            return cls(form, **common, first=d["first"], last=d["last"], mode=d["mode"])
        motion = {"clips": tuple(d["clips"]), "native": d["native"], "rate": d["rate"], "ends": d["ends"],
                  "model_fps": d["model_fps"], "retime": d["retime"]}
        if form == CHAIN:
            return cls(form, **common, **motion, clip_keys=tuple(d["clip_keys"]))
        return cls(form, **common, **motion, first=d["first"], last=d["last"], model=Model.from_json(d["model"]),
                   prompt=d["prompt"], negative_prompt=d["negative_prompt"], seed=d["seed"], steps=d["steps"],
                   guidance=d["guidance"])


@dataclass(frozen=True)
class Assemble(_Task):
    """Join the segments' frames (by their keys, in order) and encode the video."""

    kind = "assemble"
    segments: tuple[str, ...]
    frames: int
    fps: float
    codec: str
    quality: int | None
    container: str  # the output's suffix: ".mp4", ".mkv"...
    width: int
    height: int
    audio: bool = True  # [shot] audio: mux the segments' sound (when any has some)
    model = None  # ffmpeg only

    def key_inputs(self) -> dict:
        out = {"segments": list(self.segments), "frames": self.frames, "fps": self.fps, "codec": self.codec,
               "quality": self.quality, "container": self.container, "width": self.width, "height": self.height}
        if not self.audio:  # only when set: the keys of shots that keep their sound (the default) stay as they were
            out["audio"] = False
        return out

    def to_json(self) -> dict:
        return {"format": FORMAT, **self.key_inputs()}

    @classmethod
    def from_json(cls, d: dict) -> Assemble:
        return cls(tuple(d["segments"]), d["frames"], d["fps"], d["codec"], d["quality"], d["container"], d["width"],
                   d["height"], d.get("audio", True))


AnyTask = Keyframe | Clip | Segment | Assemble
KINDS = {c.kind: c for c in (Keyframe, Clip, Segment, Assemble)}


def load(kind: str, data: dict | str) -> AnyTask:
    """A stored task (its JSON, or the dict it parses to) of a kind, in any format farm has
    written: FORMAT, or the params of queues and manifests from before it (no "format")."""
    d = json.loads(data) if isinstance(data, str) else data
    if kind not in KINDS:
        raise TaskFormatError(f"unknown task kind {kind!r}")
    if not isinstance(d, dict):
        raise TaskFormatError(f"a stored {kind} task is not a JSON object")
    stored = d.get("format", 0)
    if not isinstance(stored, int) or stored > FORMAT:
        raise TaskFormatError(f"a {kind} task stored by a newer farm (format {stored!r}); this one reads up to "
                              f"format {FORMAT}")
    try:
        return KINDS[kind].from_json(d)
    except (KeyError, TypeError) as e:
        raise TaskFormatError(f"a stored {kind} task lacks or mistypes {e}") from None


def of(row: dict) -> AnyTask:
    """The task of a queue row or a manifest entry (its `kind` and stored `params`)."""
    return load(row["kind"], row["params"])
