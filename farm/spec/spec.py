"""The job spec: parse a storyboard TOML file and validate all of it before anything runs.

`load(path)` returns a `Spec` whose panels (its `[[frames]]`) carry fully resolved settings (spec defaults,
preset defaults and per-frame overrides already merged), or raises `SpecError` listing
every problem found, each with its key (`frames[2].seconds`) and line.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import tomli

from .. import files, home, models, units
from ..checks import (
    MAX_DEPTH,
    MAX_PICTURE_BYTES,
    MAX_PICTURE_SIDE,
    MAX_STEPS,
    OUT_NAME_HEADROOM,
    Checker as _Checker,
    depth,
    kind as _kind,
    path_problem,
    shown,
)
from ..errors import FarmError, SpecError
from ..models import timing
from ..queue import digest
from . import outputs, sweep
from .codecs import CODECS

# Text encoders read at most a few hundred tokens (CLIP 77, T5 and UMT5 512): 4,096 characters
# is about twice the longest window, and keeps a 200 MB "prompt" out of the tokenizers.
MAX_PROMPT = 4096
MAX_SPEC_BYTES = 16 << 20
MAX_FRAME_SECONDS = 600.0
MAX_TOTAL_FRAMES = 500_000
MAX_FRAMES = 10_000
MAX_SEED = 2**63 - 1
# A LoRA file: rank 128 over every attention and MLP layer of Wan's 14B transformer in bf16 is
# ~1.2 GB, the largest in the families farm drives; 4 GiB leaves room, and keeps a full
# checkpoint (10-25 GB) named as a LoRA from being hashed at every render.
MAX_LORA_BYTES = 4 << 30


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter applied to a stage's model: a file (or a folder holding
    pytorch_lora_weights.safetensors), its content digest (what task keys hash) and scale."""

    path: Path
    sha256: str
    scale: float


@dataclass(frozen=True)
class Keyframe:
    """How one keyframe is made: drawn by a text-to-image model, or read from an image."""

    prompt: str | None
    image: Path | None
    model: models.ModelRef | None
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    loras: tuple[Lora, ...] = ()


@dataclass(frozen=True)
class Motion:
    """How the segment that starts at a keyframe is made."""

    model: models.ModelRef
    prompt: str
    negative_prompt: str
    seed: int
    steps: int
    guidance: float
    loras: tuple[Lora, ...] = ()
    retime: str = "interpolate"  # how frames at the model's rate become the shot's (farm/models/timing.py)


@dataclass(frozen=True)
class Panel:
    """One `[[frames]]` entry of the spec: a panel of the storyboard, its keyframe and the
    segment of motion that starts at it. (The spec's word is `frames`; in farm's code a
    "frames" value is always a count of video frames, and a panel is this.)"""

    index: int  # its place in [[frames]]: `frames[index]` in messages, `params["frame"]` in tasks
    seconds: float
    keyframe: Keyframe
    motion: Motion


@dataclass(frozen=True)
class Spec:
    path: Path
    digest: str  # sha256 of the file's bytes
    name: str
    fps: float
    width: int
    height: int
    seed: int
    out: Path
    codec: str
    quality: int | None
    panels: list[Panel] = field(default_factory=list)
    retries: int | None = None  # times a failed task is tried again (None: the farm's default)
    overwrite: bool = False  # [shot] overwrite = true: the output may replace a file farm did not write
    audio: bool = True  # [shot] audio = false: no soundtrack, even where its models make sound

    def frame_starts(self) -> list[int]:
        """Index of the first video frame of each panel, plus the total frame count.

        Boundaries are rounded from cumulative time, so the total is exactly
        round(sum(seconds) * fps) and no rounding error accumulates."""
        starts, t = [0], 0.0
        for fr in self.panels:
            t += fr.seconds
            starts.append(round(t * self.fps))
        return starts


# --- reading the file --------------------------------------------------------------------


def read(path: Path) -> tuple[dict, str, bytes]:
    """Read and parse the TOML file, turning every way it can fail into a FarmError."""
    path = Path(path)
    try:
        if os.path.isdir(path):
            raise FarmError(f"{path} is a folder, not a job spec. Give the path of a .toml file.", code=2)
        size = files.regular_stat(path).st_size  # a FIFO or device is refused: reading it could block forever
        if size > MAX_SPEC_BYTES:  # parsing a 200 MB "spec" would take minutes and GBs before any check
            raise FarmError(f"{path} is {size / 1e6:.0f} MB; a job spec may be at most {MAX_SPEC_BYTES >> 20} MB "
                            f"(prompts are at most {MAX_PROMPT:,} characters each).", code=2)
        raw = files.read_regular(path, MAX_SPEC_BYTES, "a job spec")
    except FileNotFoundError:
        raise FarmError(f"{path}: no such file. Give the path of a job spec (a .toml file).", code=2) from None
    except OSError as e:
        raise FarmError(f"{path}: cannot read the job spec ({e.strerror or e}).", code=2) from None
    if not raw.strip():
        raise FarmError(f"{path} is empty: a job spec needs at least a [shot] table and one [[frames]] entry.", code=2)
    if b"\0" in raw:
        raise FarmError(f"{path} is a binary file, not a TOML job spec.", code=2)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FarmError(f"{path} is not UTF-8 text (byte {e.start}); a TOML job spec must be UTF-8.", code=2) from None
    try:
        data = tomli.loads(text)
    except tomli.TOMLDecodeError as e:
        raise FarmError(f"{path}: TOML syntax error: {e}.", code=2) from None
    except RecursionError:  # tomli's own limit: inline arrays and tables nested past 400 levels
        data = None
    if data is None or depth(data) > MAX_DEPTH:
        raise FarmError(f"{path}: tables and lists nested more than {MAX_DEPTH} levels deep; a job spec's deepest "
                        f"value is 6 levels down (a sweep of frames[0].motion.loras).", code=2)
    return data, text, raw


def _line_index(text: str) -> dict[str, int]:
    """Map key paths (`frames[2].seconds`) to the line that sets them; best effort."""
    lines: dict[str, int] = {}
    table, counts = "", {}
    for n, line in enumerate(text.splitlines(), 1):
        s = line.split("#", 1)[0].strip()
        if m := re.fullmatch(r"\[\[\s*([\w.-]+)\s*\]\]", s):
            name = m.group(1)
            counts[name] = counts.get(name, -1) + 1
            table = f"{name}[{counts[name]}]"
            lines.setdefault(table, n)
        elif m := re.fullmatch(r"\[\s*([\w.-]+)\s*\]", s):
            name = m.group(1)
            head, _, rest = name.partition(".")
            table = f"{head}[{counts[head]}].{rest}" if head in counts and rest else name
            lines.setdefault(table, n)
        elif m := re.match(r"([\w-]+)\s*=", s):
            lines.setdefault(f"{table}.{m.group(1)}" if table else m.group(1), n)
    return lines


# --- validation ---------------------------------------------------------------------------

SHOT_KEYS = ("name", "fps", "size", "seed", "out", "codec", "quality", "retries", "overwrite", "audio")
ACCELERATION_KEYS = ("accelerate", "cache_threshold", "quantize")  # a stage's; not per frame
STAGE_KEYS = ("model", "steps", "guidance", "negative_prompt", "loras") + ACCELERATION_KEYS
MOTION_KEYS = STAGE_KEYS + ("prompt", "retime")
FRAME_KEYS = ("prompt", "image", "seconds", "seed", "model", "steps", "guidance", "negative_prompt", "loras",
              "motion")
LORA_KEYS = ("path", "scale")
FRAME_MOTION_KEYS = tuple(k for k in MOTION_KEYS if k not in ACCELERATION_KEYS) + ("seed",)


def load(path: str | Path, *, force: bool = False) -> Spec:
    """Parse and validate a job spec; raise SpecError with every problem, or FarmError.
    A spec with a [sweep] is many specs: use `load_all`. `force`: as for `load_all`."""
    specs = load_all(path, force=force)
    if len(specs) != 1:
        raise FarmError(f"{path} declares a sweep of {len(specs)} variants; load it with spec.load_all().", code=2)
    return specs[0]


def load_all(path: str | Path, *, force: bool = False) -> list[Spec]:
    """Parse and validate a job spec and every variant of its [sweep], if any.

    Each variant is validated in full; problems common to all variants are listed once,
    the others under the sweep values that cause them. Raise SpecError with all of them.
    `force` (`farm render --force`) lets outputs replace files farm did not write and skips
    the free-disk estimate; it never lets farm replace a folder it did not write."""
    path = Path(path)
    data, text, raw = read(path)
    if "sweep" not in data:
        spec = _validate(path.resolve(), data, text, raw)
        _check_outputs([spec], path.resolve(), text, force)
        return [spec]
    c = _Checker(path.resolve(), _line_index(text))
    variants = sweep.expand(data.pop("sweep"), data, c)
    if c.problems:
        raise SpecError(path.resolve(), c.problems)
    specs, problems = [], {}
    for v in variants:
        try:
            spec = _validate(path.resolve(), v.data, text, raw)
        except SpecError as e:
            for problem in e.problems:
                problems.setdefault(problem, []).append(v)
            continue
        specs.append(replace(spec, name=f"{spec.name}-{v.label}", out=_suffixed(spec.out, v.label)))
    if problems:
        raise SpecError(path.resolve(), [p if len(where) == len(variants) else f"{_culprit(where, len(variants))}: {p}"
                                         for p, where in problems.items()])
    _check_outputs(specs, path.resolve(), text, force)
    return specs


def _culprit(failing: list, total: int) -> str:
    """The swept values that all failing variants share: what to fix."""
    shared = [(k, v) for k, v in failing[0].values if all((k, v) in f.values for f in failing)]
    which = ", ".join(f"{k}={shown(v)}" for k, v in shared) or "; ".join(f.describe() for f in failing)
    return f"sweep {which} ({len(failing)} of {total} variants)"


def _suffixed(out: Path, label: str) -> Path:
    """renders/lighthouse.mp4 -> renders/lighthouse-seed1-tiny.mp4 (a png folder: no suffix)."""
    return out.with_name(f"{out.stem}-{label}{out.suffix}")


def _validate(path: Path, data: dict, text: str, raw: bytes) -> Spec:
    """One variant's tables into a Spec, or SpecError with every problem in them."""
    return _Reader(path, _line_index(text)).spec(data, raw)


@dataclass
class _Stage:
    """A [keyframes] or [motion] table: the model and settings its frames start from."""

    table: dict
    model: models.ModelRef | None
    acceleration: dict
    settings: dict  # steps, guidance, negative_prompt, loras
    prompt: str | None = None  # [motion] only
    retime: str = timing.DEFAULT_RETIME


class _Reader:
    """Reads a spec table by table, one method each, collecting problems instead of stopping:
    a spec with a bad model still has its timing and sizes checked, so one run of
    `farm render` lists everything to fix. A value that failed its own check is not checked
    again against others (an invalid fps does not also make every frame "too short")."""

    def __init__(self, path: Path, lines: dict[str, int]):
        self.path, self.base = path, path.parent
        self.c = _Checker(path, lines)
        self._models: dict[str, models.ModelRef | None] = {}  # each name resolved once
        self._loras: dict[tuple, Lora | None] = {}  # each (file, scale) hashed once
        self._lora_misuse: set[str] = set()

    def spec(self, data: dict, raw: bytes) -> Spec:
        c = self.c
        c.keys(data, ("shot", "keyframes", "motion", "frames", "sweep"), "")
        shot = self.shot(c.table(data, "shot"))
        kf = self.stage(data, "keyframes", "tiny", STAGE_KEYS)
        mo = self.stage(data, "motion", "hold", MOTION_KEYS)
        if mo.acceleration and mo.model is not None and mo.model.is_ffmpeg:
            c.fail("motion.accelerate", f"{mo.model.name!r} runs ffmpeg, not a model: there is nothing to accelerate")
        if shot["width"] is None:  # no [shot] size: the keyframe model's preset size, else the motion model's, else 512
            sizes = [r.defaults["size"] for r in (kf.model, mo.model) if r is not None and r.defaults.get("size")]
            shot["width"], shot["height"] = sizes[0] if sizes else (512, 512)
        panels = [self.panel(i, fr, kf, mo, shot["seed"]) for i, fr in enumerate(self.panel_tables(data))]
        spec = Spec(path=self.path, digest=hashlib.sha256(raw).hexdigest(), panels=panels, **shot)
        if panels:
            self.check_timing(spec)
            self.check_size(spec)
            self.check_models(spec)
            self.check_quantize(spec)
        if c.problems:
            raise SpecError(self.path, c.problems)
        return spec

    # --- the tables ---------------------------------------------------------------------

    def shot(self, shot: dict) -> dict:
        """[shot]: the Spec's own fields."""
        c, p = self.c, "shot."
        c.keys(shot, SHOT_KEYS, p)
        name = c.string(shot, "name", p, default=self.path.stem)
        if name is not None and len(name) > 200:
            c.fail("shot.name", f"at most 200 characters, got {len(name)}")
            name = self.path.stem
        fps = c.number(shot, "fps", p, 0, 240, default=24, lo_open=True)
        width, height = c.size(shot, "size", p) or (None, None)
        seed = c.number(shot, "seed", p, 0, MAX_SEED, default=0, integer=True)
        codec = c.string(shot, "codec", p, default="h264")
        if codec not in CODECS:
            c.fail("shot.codec", f"expected one of {', '.join(CODECS)}, got {shown(codec)}")
            codec = "h264"
        default_out = f"renders/{file_name(name)}" + ("" if codec == "png" else ".mp4")
        given = c.string(shot, "out", p, default=default_out)
        if problem := path_problem(given, self.base, OUT_NAME_HEADROOM):
            c.fail("shot.out", problem)
            given = default_out
        out = Path(os.path.abspath(self.base / os.path.expanduser(given)))
        if out == out.parent:
            c.fail("shot.out", f"{out} is the root folder; give a {'folder' if codec == 'png' else 'file'} path")
        elif out.suffix.lower() not in CODECS[codec].containers:
            want = "a folder path with no extension" if codec == "png" else " or ".join(CODECS[codec].containers)
            c.fail("shot.out", f"codec {codec} writes {want}, got {shown(out.name)}")
        elif codec != "png" and out.is_dir():
            c.fail("shot.out", f"{out} is an existing folder; give a file name")
        quality = c.number(shot, "quality", p, 0, 63, integer=True)
        retries = c.number(shot, "retries", p, 0, 20, integer=True)
        for key in ("overwrite", "audio"):
            if key in shot and not isinstance(shot[key], bool):
                c.fail(f"shot.{key}", f"expected true or false, got {_kind(shot[key])}")
        return {"name": name, "fps": fps, "width": width, "height": height, "seed": seed, "out": out,
                "codec": codec, "quality": quality, "retries": retries, "overwrite": shot.get("overwrite") is True,
                "audio": shot.get("audio") is not False}

    def stage(self, data: dict, role: str, default_model: str, allowed: tuple[str, ...]) -> _Stage:
        """[keyframes] or [motion]: a model (with its acceleration) and the settings under it."""
        c, p = self.c, role + "."
        table = c.table(data, role)
        c.keys(table, allowed, p)
        acceleration = _acceleration(c, table, p)
        ref = _accelerated(self.model(p + "model", table.get("model", default_model), role), acceleration)
        stage = _Stage(table, ref, acceleration, self.settings(table, p, ref, {}))
        if role == "motion":
            stage.prompt = _text(c, table, "prompt", p, nonempty=False)
            stage.retime = _retime(c, table, p, timing.DEFAULT_RETIME)
        return stage

    def panel_tables(self, data: dict) -> list[dict]:
        """[[frames]]: the storyboard, one table per keyframe and the segment after it."""
        c, value = self.c, data.get("frames")
        if value is None or value == []:
            c.fail("frames", "a spec needs at least one [[frames]] entry")
        elif not isinstance(value, list) or not all(isinstance(f, dict) for f in value):
            c.fail("frames", "expected [[frames]] tables")
        elif len(value) > MAX_FRAMES:
            c.fail("frames", f"at most {MAX_FRAMES} keyframes, got {len(value)}")
        else:
            return value
        return []

    def panel(self, i: int, fr: dict, kf: _Stage, mo: _Stage, shot_seed: int) -> Panel:
        """frames[i]: its keyframe (a prompt or an image) and its segment's motion, each
        stage's settings over [keyframes] / [motion] over the model preset's defaults."""
        c, p = self.c, f"frames[{i}]."
        c.keys(fr, FRAME_KEYS, p)
        prompt = _text(c, fr, "prompt", p)
        image = None
        if "image" in fr:
            rel = c.string(fr, "image", p)
            if rel is not None and (problem := path_problem(rel, self.base)):
                c.fail(p + "image", problem)
            elif rel is not None:
                image = _check_image(c, p + "image", self.base / os.path.expanduser(rel))
            if "prompt" in fr:
                c.fail(p + "image", "give either `prompt` or `image`, not both")
        elif "prompt" not in fr:
            c.fail(p.rstrip("."), "each frame needs a `prompt` (to draw it) or an `image` (to use a picture)")
        if "seconds" not in fr:
            c.fail(p + "seconds", "missing: how long this keyframe lasts, in seconds (> 0)")
        seconds = c.number(fr, "seconds", p, 0, MAX_FRAME_SECONDS, default=1.0, lo_open=True)
        seed = c.number(fr, "seed", p, 0, MAX_SEED, integer=True, default=shot_seed)
        if "model" in fr:  # another model: its own preset's defaults, under what [keyframes] sets
            fmodel = _accelerated(self.model(p + "model", fr["model"], "keyframes"), kf.acceleration)
            inherited = {k: v for k, v in kf.settings.items() if k in kf.table} if fmodel else kf.settings
        else:
            fmodel, inherited = kf.model, kf.settings
        keyframe = self.settings(fr, p, fmodel, inherited)

        fm = c.table(fr, "motion", p)
        c.keys(fm, FRAME_MOTION_KEYS, p + "motion.")
        mmodel = (_accelerated(self.model(p + "motion.model", fm["model"], "motion"), mo.acceleration)
                  if "model" in fm else mo.model)
        motion = self.settings(fm, p + "motion.", mmodel, mo.settings)
        if mmodel is not None and mmodel.is_ffmpeg and motion["loras"]:
            where = p + "motion.loras" if "loras" in fm else "motion.loras"
            if where not in self._lora_misuse:  # once, not once per frame that inherits it
                self._lora_misuse.add(where)
                c.fail(where, f"LoRAs apply to diffusers models; {mmodel.name!r} is an ffmpeg animatic")
        return Panel(
            index=i,
            seconds=float(seconds),
            keyframe=Keyframe(prompt=prompt if image is None else None, image=image,
                              model=None if image is not None else fmodel, seed=seed, **keyframe),
            motion=Motion(model=mmodel, seed=c.number(fm, "seed", p + "motion.", 0, MAX_SEED, integer=True,
                                                      default=seed),
                          prompt=_text(c, fm, "prompt", p + "motion.", nonempty=False,
                                       default=mo.prompt if mo.prompt is not None else (prompt or "")),
                          retime=_retime(c, fm, p + "motion.", mo.retime), **motion),
        )

    # --- what the tables share ------------------------------------------------------------

    def model(self, key: str, value, role: str) -> models.ModelRef | None:
        """A model name (preset, folder or hub id) resolved once per spec, of the stage's role."""
        c = self.c
        if not isinstance(value, str) or not value.strip():
            c.fail(key, f"expected a model name (a preset, a folder or a hub id), got {_kind(value)}")
            return None
        if value not in self._models:
            try:
                self._models[value] = models.resolve(value, self.base)
            except FarmError as e:
                self._models[value] = None
                c.fail(key, e.message)
                return None
        ref = self._models[value]
        if ref is not None and ref.role != role:
            c.fail(key, f"{value!r} is a {ref.role} model ({ref.pipeline}), but [{role}] needs a {role} model")
            return None
        return ref

    def settings(self, table: dict, prefix: str, ref: models.ModelRef | None, inherited: dict) -> dict:
        """A stage's steps, guidance, negative prompt and LoRAs: the table's, else what it
        inherits, else the model preset's defaults."""
        c, defaults = self.c, ref.defaults if ref else {}
        return {
            "steps": c.number(table, "steps", prefix, 1, MAX_STEPS, integer=True,
                              default=inherited.get("steps", defaults.get("steps", 30))),
            "guidance": float(c.number(table, "guidance", prefix, 0, 100,
                                       default=inherited.get("guidance", defaults.get("guidance", 5.0)))),
            "negative_prompt": _text(c, table, "negative_prompt", prefix, nonempty=False,
                                     default=inherited.get("negative_prompt", "")),
            "loras": self.loras(table, prefix, inherited.get("loras", ())),
        }

    def loras(self, table: dict, prefix: str, inherited: tuple) -> tuple[Lora, ...]:
        c = self.c
        if "loras" not in table:
            return inherited
        value = table["loras"]
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            c.fail(prefix + "loras", f"expected a list of tables like {{ path = \"style.safetensors\", scale = 0.8 }}, "
                                     f"got {_kind(value)}")
            return ()
        out = []
        for i, lo in enumerate(value):
            key = f"{prefix}loras[{i}]"
            c.keys(lo, LORA_KEYS, key + ".")
            rel = c.string(lo, "path", key + ".")
            if "path" not in lo:
                c.fail(key + ".path", "missing: the LoRA's .safetensors file (or a folder holding one)")
            scale = float(c.number(lo, "scale", key + ".", -10, 10, default=1.0))
            if rel is None:
                continue
            if problem := path_problem(rel, self.base):
                c.fail(key + ".path", problem)
                continue
            path = (self.base / os.path.expanduser(rel)).resolve()
            if (path, scale) not in self._loras:
                self._loras[(path, scale)] = _check_lora(c, key + ".path", path, scale)
            if self._loras[(path, scale)] is not None:
                out.append(self._loras[(path, scale)])
        return tuple(out)

    # --- checks across tables -------------------------------------------------------------

    def check_timing(self, spec: Spec):
        """Frame counts at the shot's rate: not too many in all, at least one per keyframe."""
        c = self.c
        if c.failed("shot.fps"):
            return
        starts = spec.frame_starts()
        if starts[-1] > MAX_TOTAL_FRAMES:
            c.fail("frames", f"the shot would have {starts[-1]} frames; at most {MAX_TOTAL_FRAMES}")
        for fr, a, b in zip(spec.panels, starts, starts[1:]):
            if b - a < 1 and not c.failed(f"frames[{fr.index}].seconds"):
                c.fail(f"frames[{fr.index}].seconds",
                       f"{fr.seconds}s is shorter than one frame at {spec.fps} fps (at least {1 / spec.fps:.4g}s)")

    def check_size(self, spec: Spec):
        if (not self.c.failed("shot.size") and not self.c.failed("shot.codec") and spec.codec != "png"
                and (spec.width % 2 or spec.height % 2)):
            self.c.fail("shot.size", f"{spec.codec} video needs even width and height (4:2:0 / 4:2:2 chroma), "
                                     f"got {spec.width}x{spec.height}")

    def check_models(self, spec: Spec):
        """What each model's family can generate (farm/models/timing.py: side multiples, minimum and
        maximum sides, fixed sizes, its window against its frame rule), checked once per model so
        that nothing fails inside a pipeline; each problem names the nearest valid values."""
        c, seen = self.c, set()
        for fr in spec.panels:
            for key, ref in ((f"frames[{fr.index}].model", fr.keyframe.model),
                             (f"frames[{fr.index}].motion.model", fr.motion.model)):
                if ref is None or ref.is_ffmpeg or ref.identity in seen:
                    continue
                seen.add(ref.identity)
                if not c.failed("shot.size"):
                    for problem in timing.size_problems(ref, spec.width, spec.height):
                        c.fail("shot.size", problem)
                for problem in timing.window_problems(ref):
                    c.fail(key, problem)
        self.check_negative(spec)

    def check_negative(self, spec: Spec):
        """A negative prompt given to a model whose family's call takes none (FLUX.2): refused
        here, once per model, rather than dropped without a word or failing inside the call."""
        refused = set()
        for fr in spec.panels:
            for key, stage in ((f"frames[{fr.index}].negative_prompt", fr.keyframe),
                               (f"frames[{fr.index}].motion.negative_prompt", fr.motion)):
                ref = stage.model
                if ref is None or ref.is_ffmpeg or not stage.negative_prompt or ref.identity in refused:
                    continue
                fam = timing.family_of(ref)
                if fam is not None and not fam.negative:
                    refused.add(ref.identity)
                    self.c.fail(key, f"{ref.name} ({ref.pipeline}) takes no negative prompt ({fam.name} is "
                                     f"guidance-distilled): remove it, or use a model that takes one")

    def check_quantize(self, spec: Spec):
        """`quantize = "fp8"` needs a GPU of compute capability 8.9+ on this machine (the farm's
        workers are its GPUs): refused here, before anything runs, rather than by each task."""
        refs = {ref.name: ref for fr in spec.panels for ref in (fr.keyframe.model, fr.motion.model)
                if ref is not None and ref.defaults.get("quantize") == "fp8"}
        if not refs:
            return
        from ..models import fit

        capabilities = fit.cuda_capabilities()
        for name, ref in refs.items():
            try:
                if not capabilities:
                    fit.check_quantize("fp8", "cpu", None, name)
                else:
                    fit.check_quantize("fp8", "cuda", min(capabilities), name)
            except FarmError as e:
                self.c.fail(f"{ref.role}.quantize", _unlabeled(e.message, name))


def _acceleration(c: _Checker, table: dict, prefix: str) -> dict:
    """A stage's `accelerate = [...]`, `cache_threshold` and `quantize`, which override its model preset's."""
    from ..acceleration.settings import check_features, check_threshold

    out = {}
    for key, check in (("accelerate", check_features), ("cache_threshold", check_threshold),
                       ("quantize", models.check_quantize_name)):
        if key in table:
            try:
                out[key] = check(table[key], prefix + key)
            except FarmError as e:
                c.fail(prefix + key, _unlabeled(e.message, prefix + key))
    return out


def _unlabeled(message: str, label: str) -> str:
    """A check's message without the `label: ` it starts with (the checker adds its own key)."""
    return message.removeprefix(f"{label}: ")


def _accelerated(ref: models.ModelRef | None, settings: dict) -> models.ModelRef | None:
    if ref is None or ref.is_ffmpeg or not settings:
        return ref
    import dataclasses

    return dataclasses.replace(ref, defaults={**ref.defaults, **settings})


def _check_lora(c: _Checker, key: str, path: Path, scale: float) -> Lora | None:
    if path.is_dir():
        found = sorted(path.glob("*.safetensors"))
        if len(found) != 1:
            c.fail(key, f"{path} is a folder with {len(found)} .safetensors files; name the LoRA file itself")
            return None
        path = found[0]
    if not path.exists():
        c.fail(key, f"no such LoRA file: {path}")
        return None
    if path.suffix != ".safetensors":
        c.fail(key, f"{path.name}: farm loads LoRAs from .safetensors files only (pickled .bin/.pt files can run code)")
        return None
    try:
        size = files.regular_stat(path).st_size
        if size > MAX_LORA_BYTES:
            c.fail(key, f"{path} is {units.human(size)}; a LoRA may be at most {units.human(MAX_LORA_BYTES)} (is it a "
                        f"whole checkpoint? Those are named through a preset)")
            return None
        return Lora(path, digest.file_digest(path), scale)
    except FarmError as e:
        c.fail(key, e.message)
    except OSError as e:
        c.fail(key, f"cannot read the LoRA {path} ({e.strerror or e})")
    return None


def _check_image(c: _Checker, key: str, path: Path) -> Path | None:
    if not path.exists():
        c.fail(key, f"no such file: {path}")
        return None
    if path.is_dir():
        c.fail(key, f"{path} is a folder, not an image")
        return None
    from PIL import UnidentifiedImageError

    Image = files.pictures()
    try:
        with files.open_regular(path, MAX_PICTURE_BYTES, "a keyframe picture") as f, Image.open(f) as im:
            w, h = im.size
            if max(w, h) > MAX_PICTURE_SIDE:
                c.fail(key, f"{path} is {w}x{h} pixels; pictures may be at most {MAX_PICTURE_SIDE} pixels a side "
                            f"(scale it down first)")
                return None
            im.verify()
    except FarmError as e:
        c.fail(key, e.message)
        return None
    except Image.DecompressionBombError:  # over twice the limit: refused before its size is known
        c.fail(key, f"{path} has more than {MAX_PICTURE_SIDE}² pixels; pictures may be at most {MAX_PICTURE_SIDE} "
                    f"pixels a side (scale it down first)")
        return None
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
        c.fail(key, f"{path} is not a readable image ({e})")
        return None
    return path.resolve()


def _check_outputs(specs: list[Spec], path: Path, text: str, force: bool):
    """Where the outputs go (see farm/spec/outputs.py) and whether the disk can hold them."""
    c = _Checker(path, _line_index(text))
    seen = set()
    for spec in specs:
        long = path_problem(str(spec.out), "/", OUT_NAME_HEADROOM)  # a sweep's labels lengthen the name
        for problem in [long] if long else outputs.problems(spec.out, spec.codec, path.parent, force or spec.overwrite):
            if problem not in seen:
                seen.add(problem)
                c.fail("shot.out", problem)
    if not force:
        need: dict[Path, list] = {}
        for spec in specs:
            frames = spec.frame_starts()[-1]
            est = outputs.estimate_bytes(frames, len(spec.panels), spec.width, spec.height, spec.codec)
            for where, bytes_ in zip((home.cache_dir(), spec.out.parent), est):
                mount, free = outputs.free_bytes(where)
                need.setdefault(mount.stat().st_dev, [mount, free, 0])[2] += bytes_
        for mount, free, bytes_ in need.values():
            if bytes_ > free:
                c.fail("frames", f"the render would write about {units.human(bytes_)} to {mount}, which has "
                                 f"{units.human(free)} free; free space, shorten the shot, or pass --force")
    if c.problems:
        raise SpecError(path, c.problems)


def _text(c: _Checker, table, key, prefix, default=None, nonempty=True):
    """A prompt: a string of at most MAX_PROMPT characters."""
    v = c.string(table, key, prefix, default=default, nonempty=nonempty)
    if isinstance(v, str) and len(v) > MAX_PROMPT:
        c.fail(prefix + key, f"{len(v):,} characters; at most {MAX_PROMPT:,} (text encoders read a few hundred "
                             f"tokens: the rest would be cut off anyway)")
        return default
    return v


def file_name(name: str) -> str:
    """A shot's name as a file name: no folders, no leading dots (`../../x` -> `_.._x`)."""
    safe = re.sub(r"[^\w.-]+", "_", name).lstrip(".")
    return safe[:120] or "shot"


def _retime(c: _Checker, table: dict, prefix: str, default: str) -> str:
    value = c.string(table, "retime", prefix, default=default)
    if value not in timing.RETIME:
        c.fail(prefix + "retime", f"expected one of {', '.join(map(repr, timing.RETIME))}, got {shown(value)}")
        return default
    return value


