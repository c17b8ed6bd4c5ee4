"""The plan: expand a validated spec into a task graph, purely (no I/O but hashing images).

One `keyframe` task per frame, one `segment` per keyframe (from it to the next keyframe;
the last one holds or animates its keyframe alone), and one `assemble` that joins the
segments and encodes. Every task has a `key`: the hash of everything that determines its
output, including the keys of the tasks it depends on, so an edit changes exactly the keys
downstream of it and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..acceleration import settings
from ..models import timing
from ..queue.digest import file_digest
from ..spec.spec import Spec
from . import tasks
from .tasks import VERSIONS, task_key  # noqa: F401 - where they were before farm/plan/tasks.py


@dataclass(frozen=True)
class Task:
    """A node of the job's graph: a typed task (`params`, farm/plan/tasks.py) under a name unique in
    the job (keyframe[0], segment[0], assemble), with the names of the tasks it needs."""
    name: str
    kind: str
    key: str
    params: tasks.AnyTask
    deps: tuple[str, ...] = ()  # names of the tasks this one needs
    model: str | None = None  # identity of the model it loads (None for ffmpeg-only tasks)

    def stored(self) -> dict:
        """What the queue keeps of its task: the record's stored form (a plain dict passes as it
        is: the queue's own tests and benchmarks submit tasks that no worker runs)."""
        return self.params if isinstance(self.params, dict) else self.params.to_json()


def _node(name: str, task: tasks.AnyTask, deps: tuple[str, ...] = ()) -> Task:
    return Task(name, task.kind, task.key(), task, deps, task.identity)


@dataclass(frozen=True)
class Plan:
    spec: Spec
    tasks: list[Task] = field(default_factory=list)

    def by_name(self) -> dict[str, Task]:
        return {t.name: t for t in self.tasks}


def assembly(tasks) -> dict | None:
    """The one `assemble` task among a job's tasks (queue rows or a manifest's entries), or None."""
    return next((t for t in tasks if t["kind"] == "assemble"), None)


def _model(ref, loras=()) -> tasks.Model:
    """A model as its tasks hold it (farm/plan/tasks.py's Model: what of it determines pixels, in
    the key, and where and how to load it, not in the key)."""
    features = tuple(ref.defaults.get("accelerate") or ())
    return tasks.Model(
        identity=ref.identity, pipeline=ref.pipeline, dtype=ref.defaults.get("dtype"), options=ref.options(),
        scheduler=ref.defaults.get("scheduler"),
        # the preset's own LoRAs (farm/models/identity.py), then the spec's, which add to them
        loras=tuple(tasks.Lora(str(lo.path), lo.sha256, lo.scale, getattr(lo, "into", None))
                    for lo in (*ref.loras, *loras)),
        quantize=ref.defaults.get("quantize"), accelerate=features,
        cache_threshold=ref.defaults.get("cache_threshold", settings.DEFAULT_CACHE_THRESHOLD)
        if "cache" in features else None,
        taylorseer=(settings.TAYLORSEER_INTERVAL, settings.TAYLORSEER_WARMUP) if "taylorseer" in features else None,
        name=ref.name, source=ref.source, memory=ref.memory, config=ref.config, component=ref.component,
        trust_remote_code=bool(ref.trust_remote_code))


def build(spec: Spec) -> Plan:
    size = {"width": spec.width, "height": spec.height}
    nodes: list[Task] = []
    keyframes: list[Task] = []
    for fr in spec.panels:
        k = fr.keyframe
        if k.image is not None:
            task = tasks.Keyframe(fr.index, **size, image=str(k.image), image_sha256=file_digest(k.image))
        else:
            task = tasks.Keyframe(fr.index, **size, model=_model(k.model, k.loras), prompt=k.prompt,
                                  negative_prompt=k.negative_prompt, seed=k.seed, steps=k.steps, guidance=k.guidance)
        keyframes.append(_node(f"keyframe[{fr.index}]", task))
        nodes.append(keyframes[-1])

    starts = spec.frame_starts()
    segments: list[Task] = []
    for i, fr in enumerate(spec.panels):
        first = keyframes[i]
        last = keyframes[i + 1] if i + 1 < len(keyframes) else None
        frames = starts[i + 1] - starts[i]
        made = _segment(spec, fr, i, first, last, frames, size)
        segments.append(made[-1])
        nodes.extend(made)

    assemble = tasks.Assemble(tuple(s.key for s in segments), starts[-1], spec.fps, spec.codec, spec.quality,
                              spec.out.suffix.lower(), **size, audio=spec.audio)
    nodes.append(_node("assemble", assemble, tuple(s.name for s in segments)))
    return Plan(spec, nodes)


def _segment(spec: Spec, fr, i: int, first: Task, last: Task | None, frames: int, size: dict) -> list[Task]:
    """The tasks of segment i: one task, or, when its frames at the model's rate exceed the
    model's window, a chain of clip tasks and a segment task that retimes them.

    A model segment covers `frames` shot frames; its motion is generated at the model's own
    rate (farm/models/timing.py) and retimed to the shot's fps. Each clip's key holds the key of the
    clip before it (the first: the keyframe's), and only the last one holds the next
    keyframe's, so editing that keyframe re-runs the last clip, the retiming and the assembly."""
    m = fr.motion
    ends = {"first": first.key, "last": last.key if last else None}
    shot = {"frame": i, "frames": frames, "fps": spec.fps, **size}
    deps = (first.name,) + ((last.name,) if last else ())
    if m.model.is_ffmpeg:  # an animatic: drawn at the shot's rate, nothing to retime
        return [_node(f"segment[{i}]", tasks.Segment(tasks.ANIMATIC, **shot, **ends, mode=m.model.name), deps)]
    time = timing.segment(m.model, frames, spec.fps)
    model = _model(m.model, m.loras)
    call = {"model": model, "prompt": m.prompt, "negative_prompt": m.negative_prompt, "steps": m.steps,
            "guidance": m.guidance}
    retime = {"clips": tuple(time.clips), "native": time.native, "rate": str(time.rate), "ends": time.ends,
              "model_fps": time.fps, "retime": m.retime}
    if len(time.clips) == 1:
        segment = tasks.Segment(tasks.ONE_CLIP, **shot, **ends, **call, seed=m.seed, **retime)
        return [_node(f"segment[{i}]", segment, deps)]
    # The last clip of a first/last-frame family ends on the next keyframe (the last segment
    # on its own keyframe, a loop, as a one-clip segment does); the others run free.
    end = (last or first) if time.ends else None
    clips: list[Task] = []
    for j, count in enumerate(time.clips):
        final = j == len(time.clips) - 1
        prev = clips[-1] if clips else first
        clip = tasks.Clip(i, j, **call, seed=(m.seed + j) % (2**63), model_fps=time.fps, **size, frames=count,
                          start=prev.key, start_is_clip=bool(clips), end=end.key if final and end else None)
        cdeps = (prev.name,) + ((end.name,) if final and end and end.name != prev.name else ())
        clips.append(_node(f"segment[{i}].clip[{j}]", clip, cdeps))
    segment = tasks.Segment(tasks.CHAIN, **shot, **retime, clip_keys=tuple(c.key for c in clips))
    return clips + [_node(f"segment[{i}]", segment, tuple(c.name for c in clips))]
