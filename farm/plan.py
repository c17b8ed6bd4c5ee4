"""The plan: expand a validated spec into a task graph, purely (no I/O but hashing images).

One `keyframe` task per frame, one `segment` per keyframe (from it to the next keyframe;
the last one holds or animates its keyframe alone), and one `assemble` that joins the
segments and encodes. Every task has a `key`: the hash of everything that determines its
output, including the keys of the tasks it depends on, so an edit changes exactly the keys
downstream of it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from . import timing
from .acceleration import settings
from .digest import file_digest
from .spec import Spec
from .tasks import VERSIONS, task_key  # noqa: F401 - VERSIONS: where readers found it


@dataclass(frozen=True)
class Task:
    name: str  # unique in the job: keyframe[0], segment[0], assemble
    kind: str
    key: str
    params: dict
    deps: tuple[str, ...] = ()  # names of the tasks this one needs
    model: str | None = None  # identity of the model it loads (None for ffmpeg-only tasks)


@dataclass(frozen=True)
class Plan:
    spec: Spec
    tasks: list[Task] = field(default_factory=list)

    def by_name(self) -> dict[str, Task]:
        return {t.name: t for t in self.tasks}


def assembly(tasks) -> dict | None:
    """The one `assemble` task among a job's tasks (queue rows or a manifest's entries), or None."""
    return next((t for t in tasks if t["kind"] == "assemble"), None)


def _model(ref, loras=()) -> dict:
    """What of a model determines pixels: its identity, class, dtype and call options, and
    (only when set, so keys made before they existed stay valid) its scheduler, LoRAs (each
    by content digest and scale, not by path), quantization and acceleration (fused kernels round
    differently, compiled graphs reorder sums, the cache skips blocks)."""
    out = {"identity": ref.identity, "pipeline": ref.pipeline, "dtype": ref.defaults.get("dtype"),
           "options": ref.options()}
    if ref.defaults.get("scheduler"):
        out["scheduler"] = ref.defaults["scheduler"]
    if loras:
        out["loras"] = [{"sha256": lo.sha256, "scale": lo.scale} for lo in loras]
    if ref.defaults.get("quantize"):  # one-byte weights draw slightly other pixels
        out["quantize"] = ref.defaults["quantize"]
    features = ref.defaults.get("accelerate")
    if features:
        out["accelerate"] = list(features)
        if "cache" in features:
            out["cache_threshold"] = ref.defaults.get("cache_threshold", settings.DEFAULT_CACHE_THRESHOLD)
        if "taylorseer" in features:  # its fixed schedule changes pixels too
            out["taylorseer"] = [settings.TAYLORSEER_INTERVAL, settings.TAYLORSEER_WARMUP]
    return out


def _where(ref, loras=()) -> dict:
    """Where and how to load a model: in the task's params, not its key (moving a folder,
    renaming a preset or offloading to the CPU does not change what the model draws)."""
    model = {**_model(ref, loras), "name": ref.name, "source": ref.source, "memory": ref.memory,
             "config": ref.config, "component": ref.component}
    if loras:
        model["loras"] = [{"path": str(lo.path), "sha256": lo.sha256, "scale": lo.scale} for lo in loras]
    if ref.trust_remote_code:
        model["trust_remote_code"] = True
    return {"model": model}


def build(spec: Spec) -> Plan:
    size = {"width": spec.width, "height": spec.height}
    tasks: list[Task] = []
    keyframes: list[Task] = []
    for fr in spec.panels:
        k = fr.keyframe
        if k.image is not None:
            inputs = {"image_sha256": file_digest(k.image), **size}
            params = {"frame": fr.index, "image": str(k.image), **inputs}
            model = None
        else:
            inputs = {"model": _model(k.model, k.loras), "prompt": k.prompt, "negative_prompt": k.negative_prompt,
                      "seed": k.seed, "steps": k.steps, "guidance": k.guidance, **size}
            params = {"frame": fr.index, **inputs, **_where(k.model, k.loras)}
            model = k.model.identity
        task = Task(f"keyframe[{fr.index}]", "keyframe", task_key("keyframe", inputs), params, (), model)
        keyframes.append(task)
        tasks.append(task)

    starts = spec.frame_starts()
    segments: list[Task] = []
    for i, fr in enumerate(spec.panels):
        first = keyframes[i]
        last = keyframes[i + 1] if i + 1 < len(keyframes) else None
        frames = starts[i + 1] - starts[i]
        made = _segment(spec, fr, i, first, last, frames, size)
        segments.append(made[-1])
        tasks.extend(made)

    inputs = {"segments": [s.key for s in segments], "frames": starts[-1], "fps": spec.fps,
              "codec": spec.codec, "quality": spec.quality, "container": spec.out.suffix.lower(), **size}
    tasks.append(Task("assemble", "assemble", task_key("assemble", inputs), inputs,
                      tuple(s.name for s in segments)))
    return Plan(spec, tasks)


def _segment(spec: Spec, fr, i: int, first: Task, last: Task | None, frames: int, size: dict) -> list[Task]:
    """The tasks of segment i: one task, or, when its frames at the model's rate exceed the
    model's window, a chain of clip tasks and a segment task that retimes them.

    A model segment covers `frames` shot frames; its motion is generated at the model's own
    rate (farm/timing.py) and retimed to the shot's fps. Each clip's key holds the key of the
    clip before it (the first: the keyframe's), and only the last one holds the next
    keyframe's, so editing that keyframe re-runs the last clip, the retiming and the assembly."""
    m = fr.motion
    base = {"first": first.key, "last": last.key if last else None, "frames": frames, "fps": spec.fps, **size}
    deps = (first.name,) + ((last.name,) if last else ())
    if m.model.is_ffmpeg:  # an animatic: drawn at the shot's rate, nothing to retime
        inputs = {**base, "mode": m.model.name}
        return [Task(f"segment[{i}]", "segment", task_key("segment", inputs), {"frame": i, **inputs}, deps, None)]
    time = timing.segment(m.model, frames, spec.fps)
    call = {"model": _model(m.model, m.loras), "prompt": m.prompt, "negative_prompt": m.negative_prompt,
            "steps": m.steps, "guidance": m.guidance, "model_fps": time.fps, **size}
    retime = {"clips": list(time.clips), "native": time.native, "rate": str(time.rate), "ends": time.ends,
              "model_fps": time.fps, "retime": m.retime}
    where = _where(m.model, m.loras)
    if len(time.clips) == 1:
        inputs = {**base, **call, "seed": m.seed, **retime}
        return [Task(f"segment[{i}]", "segment", task_key("segment", inputs), {"frame": i, **inputs, **where},
                     deps, m.model.identity)]
    # The last clip of a first/last-frame family ends on the next keyframe (the last segment
    # on its own keyframe, a loop, as a one-clip segment does); the others run free.
    end = (last or first) if time.ends else None
    clips: list[Task] = []
    for j, count in enumerate(time.clips):
        final = j == len(time.clips) - 1
        prev = clips[-1] if clips else first
        inputs = {**call, "start": prev.key, "start_is_clip": bool(clips), "end": end.key if final and end else None,
                  "frames": count, "clip": j, "seed": (m.seed + j) % (2**63)}
        cdeps = (prev.name,) + ((end.name,) if final and end and end.name != prev.name else ())
        clips.append(Task(f"segment[{i}].clip[{j}]", "clip", task_key("clip", inputs),
                          {"frame": i, **inputs, **where}, cdeps, m.model.identity))
    inputs = {"frames": frames, "fps": spec.fps, **size, **retime, "clip_keys": [c.key for c in clips]}
    segment = Task(f"segment[{i}]", "segment", task_key("segment", inputs), {"frame": i, **inputs},
                   tuple(c.name for c in clips), None)
    return clips + [segment]
