"""The runner: loaded pipelines and the task handlers, with no queue.

Handlers are looked up by task kind in `HANDLERS`; each writes its output into a fresh cache
folder that is published only when the handler returns. Loaded pipelines stay warm in an LRU
bounded by memory (GPU memory on a GPU, RAM on the CPU). A local worker (farm/run/worker.py: the
queue loop and its heartbeat) runs tasks through one, and so does a Ray actor
(farm/ray/cluster.py), which receives a task's inputs as bytes instead of reading a shared cache.
Whoever holds the runner passes its lease check in as `on_step`: it is called between
denoising steps and before an output is published, and what it raises ends the task.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sys
import tempfile
from collections import OrderedDict
from dataclasses import replace
from fractions import Fraction
from pathlib import Path

from .. import allocator, files, models
from ..errors import FarmError
from ..media import encode, sound
from ..media.manifest import VIDEO_INFO
from ..models import fit, pipeline, timing
from ..plan import tasks
from ..queue.cache import Cache

FRAME = "{:06d}.png"


class Runner:
    def __init__(self, cache: Cache, *, device: str | None = None, memory_budget: int | None = None,
                 max_warm: int | None = None, steps_progress: bool = False):
        self.cache = cache
        self.device = device or models.device()  # where pipelines run
        # [identity, dtype, scheduler, accelerate, cache_threshold] -> loaded pipeline, least recently used first
        self.pipelines: OrderedDict[str, object] = OrderedDict()
        self.footprints: dict[str, int] = {}  # bytes each holds on the device between tasks
        self.placements: dict[str, str] = {}  # how each was loaded (farm/models/fit.py)
        self.last_fit: fit.Choice | None = None  # the memory choice of the latest model task
        self.memory_budget = memory_budget  # bytes for loaded models; None: what the device has free
        # How many pipelines stay loaded, whatever the memory says. On a GPU, 2: a keyframe and a
        # motion model, which a sweep over keyframe models still reuses job after job; SDXL (7 GB
        # in fp16) next to Wan 14B (28 GB in bf16) already fills a 40 GB card, so a third would not
        # fit. On the CPU, 8: the twins are a few MB each. `FARM_MAX_WARM` overrides both.
        env = os.environ.get("FARM_MAX_WARM")
        self.max_warm = max_warm or (int(env) if env else (8 if self.device == "cpu" else 2))
        if self.device == "cpu":  # the models draw in host memory: keep glibc from re-faulting their buffers
            allocator.keep_freed()
        self.steps_progress = steps_progress
        self.calls = {"load": 0, "unload": 0, "keyframe": 0, "segment": 0, "clip": 0, "assemble": 0}
        self._on_step = None  # the caller's check while a task runs (a worker's lease check)

    # --- running a task -----------------------------------------------------------------

    def failure(self, task: dict, e: Exception) -> tuple[str, bool]:
        """What a task's failure says, and whether it is worth retrying (a Ray actor's
        failures are reported by its driver, through this too)."""
        if isinstance(e, FarmError):  # the user's input can't work: retrying would fail the same way
            return e.message, getattr(e, "retry", False)
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return (f"disk full while writing {task['name']} ({e.filename or self.cache.root}); free space and "
                    f"render again"), False
        if _is_oom(e):  # any model or library failure is retried
            return f"out of memory on {self.device}: {e}", True
        return f"{type(e).__name__}: {e}", True

    def produce(self, task: dict, inputs: dict[str, dict[str, bytes]], on_step=None) -> dict[str, bytes]:
        """Run a task away from the queue and its cache (in a Ray actor): `inputs` holds the
        outputs of the tasks it reads, by key (file name -> bytes), and a picture keyframe's
        picture under "image"; they are written into this runner's own cache, the handler runs
        as in `run`, and its output comes back as file name -> bytes (then leaves this cache).
        Failures raise; `failure` says what to report."""
        written = []
        try:
            for key, files in inputs.items():
                if key == "image":
                    continue
                if not self.cache.has(key):
                    with self.cache.writing(key) as out:
                        for name, data in files.items():
                            (out / name).write_bytes(data)
                    written.append(key)
            work = tasks.of(task)
            if "image" in inputs:  # the head's path means nothing here: the picture's bytes came instead
                self.cache.root.mkdir(parents=True, exist_ok=True)
                folder = Path(tempfile.mkdtemp(prefix="image-", dir=self.cache.root))
                picture = folder / ("picture" + Path(work.image).suffix)
                picture.write_bytes(inputs["image"]["image"])
                work = replace(work, image=str(picture))
                written.append(folder)
            self.run(task, work, on_step=on_step)
            written.append(task["key"])
            return {f.name: f.read_bytes() for f in self.cache.files(task["key"])}
        finally:
            for entry in written:
                if isinstance(entry, Path):
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    self.cache.discard(entry)

    def run(self, task: dict, work: tasks.AnyTask | None = None, on_step=None):
        """Run the handler of the task (a queue row; `work`: its typed task, if not the row's
        own) into a fresh cache entry, calling `on_step` between denoising steps and once more
        before the entry is published (what it raises ends the task: an abandoned attempt
        publishes nothing). Out of memory: free every loaded model and try once more before it
        counts as a failure."""
        work = tasks.of(task) if work is None else work
        self._on_step = on_step
        try:
            for last_try in (False, True):
                try:
                    with self.cache.writing(task["key"]) as out:
                        HANDLERS[task["kind"]](self, work, out)
                        self.step()
                    return
                except Exception as e:  # noqa: BLE001
                    if last_try or not _is_oom(e):
                        raise
                    self.unload_all()
        finally:
            self._on_step = None

    def step(self, *args):
        """Between denoising steps (a pipeline's `on_step`): the check of whoever runs the task."""
        if self._on_step is not None:
            self._on_step(*args)

    # --- models -------------------------------------------------------------------------

    def pipe(self, model: tasks.Model, shape: tuple[int, int, int] | None = None):
        """The loaded pipeline for a task's model, loading it on first use (and unloading the
        least recently used ones while it would not fit in memory or in `max_warm`), with
        exactly the task's LoRAs active (one loaded base model serves every LoRA combination).
        An accelerated pipeline is rewired and compiled, so it is held apart from the plain one
        (its features and cache threshold are part of the warm key, not of the identity that
        claims compare). With the task's `shape` (width, height, frames), farm/models/fit.py first
        chooses how to run it so that it fits the device: a warm pipeline loaded for a smaller
        task is loaded again with more offloading when this one needs it."""
        warm = json.dumps([model.identity, model.dtype, model.scheduler, list(model.accelerate) or None,
                           model.cache_threshold, model.quantize])
        choice = self._choose(model, shape) if shape is not None else None
        if choice is not None and warm in self.pipelines and \
                fit.offload_level(choice.placement) > fit.offload_level(self.placements.get(warm, "all")):
            self.unload(warm)
        if warm not in self.pipelines:
            ref = models.ref_from_params(model.to_json())
            need = choice.peak if choice is not None else models.footprint(ref)
            while self.pipelines and (len(self.pipelines) >= self.max_warm or not self._fits(need)):
                self.unload(next(iter(self.pipelines)))
            pipe = models.load_pipeline(ref, self.device, placement=choice.placement if choice else None)
            if model.accelerate:
                from ..acceleration import DEFAULT_CACHE_THRESHOLD, accelerate

                accelerate(pipe, list(model.accelerate), cache_threshold=DEFAULT_CACHE_THRESHOLD
                           if model.cache_threshold is None else model.cache_threshold)
            self.pipelines[warm] = pipe
            self.footprints[warm] = choice.resident if choice is not None else need
            self.placements[warm] = choice.placement if choice is not None else "all"
            self.calls["load"] += 1
        pipe = self.pipelines.pop(warm)
        self.pipelines[warm] = pipe  # most recently used last
        if choice is not None:
            fit.set_tiling(pipe, choice.tiling or bool(model.memory.get("vae_tiling")))
        models.use_loras(pipe, model.to_json().get("loras", []))
        pipe.set_progress_bar_config(disable=not self.steps_progress, leave=False, dynamic_ncols=True)
        return pipe

    def _choose(self, model: tasks.Model, shape: tuple[int, int, int]) -> fit.Choice | None:
        """The cheapest way to run this task that fits what the device has free, counting the
        memory the warm models would give back if unloaded (FarmError if nothing fits)."""
        ref = models.ref_from_params(model.to_json())
        try:  # a single-file checkpoint is measured by its config folder
            est = fit.for_model(model, shape, self.device, Path(ref.config) if ref.config else models.local_path(ref))
        except fit.Unmeasured:  # no weights to measure and no [fit] table: load as before, unfitted
            return None
        free = models.free_memory(self.device) + sum(self.footprints.values())
        host = models.free_memory("cpu") if self.device != "cpu" else None
        self.last_fit = fit.choose(est, free, self.device, floor=model.memory, host_free=host)
        return self.last_fit

    def _fits(self, need: int) -> bool:
        if self.memory_budget is not None:
            return sum(self.footprints.values()) + need <= self.memory_budget
        return fit.fits(need, models.free_memory(self.device), self.device)  # with the chooser's headroom

    def unload(self, warm: str):
        """Unload a pipeline and give its memory back."""
        del self.pipelines[warm]
        self.footprints.pop(warm, None)
        self.placements.pop(warm, None)
        self.calls["unload"] += 1
        models.release_memory(self.device)

    def unload_all(self):
        for warm in list(self.pipelines):
            self.unload(warm)

    def held(self) -> frozenset:
        """Identities of the models loaded here: what claims prefer."""
        return frozenset(json.loads(w)[0] for w in self.pipelines)

    # --- outputs ------------------------------------------------------------------------

    def output(self, key: str) -> Path:
        return self.cache.path(key)

    def frames_of(self, key: str) -> list[Path]:
        return [p for p in self.cache.files(key) if p.suffix == ".png"]


def _is_oom(e: BaseException) -> bool:
    torch = sys.modules.get("torch")  # not imported: no model ran, so no CUDA error was raised
    return (torch is not None and isinstance(e, torch.cuda.OutOfMemoryError)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


# --- handlers: one per task kind ------------------------------------------------------------


def run_keyframe(runner: Runner, task: tasks.Keyframe, out: Path):
    if task.image is not None:
        image = _picture(task)
    else:
        image = pipeline.keyframe(runner.pipe(task.model, task.shape), task.to_json(), on_step=runner.step)
        runner.calls["keyframe"] += 1
    image.save(out / "image.png")


def _picture(task: tasks.Keyframe):
    """A picture keyframe, fitted to the shot: the bytes are read once and must be the ones
    whose digest the task's key holds. A picture edited after the job was planned is refused,
    or its pixels would be cached under the old picture's key (and shown for it later)."""
    import hashlib
    import io

    from ..checks import MAX_PICTURE_BYTES

    path = Path(task.image)
    try:  # a regular file only: the picture may have been swapped for a FIFO since validation
        data = files.read_regular(path, MAX_PICTURE_BYTES, "a keyframe picture")
    except OSError as e:
        raise FarmError(f"Cannot read the picture of frames[{task.frame}], {path} ({e.strerror or e}).",
                        code=2) from None
    if hashlib.sha256(data).hexdigest() != task.image_sha256:
        raise FarmError(f"The picture of frames[{task.frame}], {path}, changed after the job was planned; "
                        f"render the spec again to use it as it is now.", code=2)
    with files.pictures().open(io.BytesIO(data)) as im:
        return pipeline.fit(im, task.width, task.height)


def run_segment(runner: Runner, task: tasks.Segment, out: Path):
    """A segment: an animatic (hold / crossfade) at the shot's rate, or motion at the model's
    rate (one clip made here, or the chain of clip tasks it depends on), retimed to the shot's."""
    first = runner.output(task.first) / "image.png" if task.first else None
    last = runner.output(task.last) / "image.png" if task.last else None
    if task.form == tasks.ANIMATIC:
        if task.mode == "hold" or last is None:
            encode.hold(first, task.frames, out)
        else:
            encode.crossfade(first, last, task.frames, task.fps, out)
        return
    with tempfile.TemporaryDirectory(prefix=".native-", dir=out) as tmp:
        if task.form == tasks.CHAIN:  # each next clip starts on the last frame of the one before
            clips = [runner.frames_of(key) for key in task.clip_keys]
            native = [f for j, frames in enumerate(clips) for f in frames[(1 if j else 0):]]
            made = _chain_sound(runner, task, [len(frames) for frames in clips])
        else:  # one clip: the last segment of a first/last-frame family loops back to its keyframe
            start = _image(first)
            end = _image(last) if last else (start if task.ends else None)
            made = pipeline.clip(runner.pipe(task.model, task.shape), task.to_json(), start, end, task.clips[0],
                                 task.seed, on_step=runner.step)
            runner.calls["segment"] += 1
            native = []
            for i, frame in enumerate(made.frames):
                native.append(Path(tmp) / FRAME.format(i))
                frame.save(native[-1])
            made = made.sound
        _retime(native, task, out)
    # Retiming changes how many frames, not how long: the sound lasts the segment's seconds.
    sound.keep(out, made, task.frames / task.fps)


def _chain_sound(runner: Runner, task: tasks.Segment, counts: list[int]):
    """A chain's clips' sounds (`counts`: each clip's frames) joined as their frames are: each
    next clip drops its first frame's time (the frame it shares with the clip before). None if
    no clip has sound."""
    period = 1 / float(Fraction(task.rate))
    parts = []
    for j, (key, count) in enumerate(zip(task.clip_keys, counts)):
        clip = sound.of(runner.output(key))
        if clip is not None and j:
            audio, rate = clip
            clip = audio[:, sound.samples(period, rate):], rate
        parts.append((clip, (count - (1 if j else 0)) * period))
    return sound.join(parts)


def run_clip(runner: Runner, task: tasks.Clip, out: Path):
    """One clip of a chain: from the segment's keyframe or the previous clip's last frame,
    towards the next keyframe when it is the last clip of a first/last-frame family."""
    start = runner.frames_of(task.start)[-1] if task.start_is_clip else runner.output(task.start) / "image.png"
    end = _image(runner.output(task.end) / "image.png") if task.end else None
    made = pipeline.clip(runner.pipe(task.model, task.shape), task.to_json(), _image(start), end, task.frames,
                         task.seed, on_step=runner.step)
    runner.calls["clip"] += 1
    for i, frame in enumerate(made.frames):
        frame.save(out / FRAME.format(i))
    sound.keep(out, made.sound, task.frames / task.model_fps)


def _image(path: Path):
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.convert("RGB")


def _retime(native: list[Path], task: tasks.Segment, out: Path):
    """Native frames (at the task's model rate) -> the segment's frames at the shot's fps."""
    if len(native) != task.native:
        raise FarmError(f"segment expected {task.native} frames at the model's rate, found {len(native)}")
    n, rate, fps = task.frames, task.rate, task.fps
    if task.retime == "nearest" or timing.is_identity(len(native), rate, n, fps):
        for k, i in enumerate(timing.nearest(len(native), rate, n, fps)):
            files.link_or_copy(native[i], out / FRAME.format(k))
    else:
        encode.retime(native, timing.rational(rate), timing.rational(fps), n, task.retime, out)


def run_assemble(runner: Runner, task: tasks.Assemble, out: Path):
    segments = [runner.frames_of(key) for key in task.segments]
    frames = [f for segment in segments for f in segment]
    if len(frames) != task.frames:
        raise FarmError(f"assembly expected {task.frames} frames from its segments, found {len(frames)}")
    dest = out / f"video{task.container}"
    # The soundtrack: every segment's sound (silence for one without), unless the shot has no
    # sound (`audio = false`), no segment has any, or it is a folder of PNGs.
    track = None
    if task.audio and task.codec != "png":
        track = sound.join([(sound.of(runner.output(key)), len(segment) / task.fps)
                            for key, segment in zip(task.segments, segments)])
    with tempfile.TemporaryDirectory(prefix=".sound-", dir=out) as tmp:
        wav = None
        if track is not None:
            wav = Path(tmp) / sound.AUDIO
            sound.write(wav, *track)
        encode.encode(frames, task.fps, task.codec, task.quality, dest, audio=wav)
    if task.codec == "png":
        info = {"codec": "png", "width": task.width, "height": task.height, "fps": task.fps,
                "frames": len(list(dest.glob("*.png")))}
    else:
        info = encode.probe(dest)  # decoded once, here: publishing the cached video reads this instead
    if info["frames"] != task.frames:
        raise FarmError(f"the encoder wrote {info['frames']} frames into {dest.name}; the plan has {task.frames}")
    if track is not None:  # the soundtrack as muxed (codec, rate, channels, seconds): the manifest's video.audio
        info["audio"] = encode.audio_stream(dest)
    (out / VIDEO_INFO).write_text(json.dumps(info))
    runner.calls["assemble"] += 1


HANDLERS = {"keyframe": run_keyframe, "segment": run_segment, "clip": run_clip, "assemble": run_assemble}
