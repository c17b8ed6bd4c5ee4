"""`farm plan`: what a render will run, before it runs.

`forecast(path)` validates a spec and builds its plan, as `farm render` does, but enqueues and
draws nothing: for every task its kind, model, whether the cache will answer it, for segments
their clips at the model's rate, and an estimate of its time from this farm's own history
(finished tasks of the same kind, model, size and steps in the queue database, read-only;
without one, unknown). `run` counts exactly the tasks `farm render` will then execute: a task
is cached when its key is in the cache, or when an earlier task of the same render (an
earlier variant of a sweep, a twin keyframe) makes it first.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .. import home
from ..errors import FarmError
from ..queue.cache import Cache
from ..spec import spec as specs
from . import plan as planner, tasks


def forecast(path: str | Path, *, db: str | Path | None = None) -> list[dict]:
    """One forecast per variant of the spec at `path` (one without a [sweep])."""
    variants = specs.load_all(path)
    cache = Cache(home.cache_dir())
    history = History(Path(db) if db else home.db_path())
    made: set[str] = set()
    memory: dict[tuple, int | None] = {}
    return [forecast_spec(spec, cache, history, made, memory) for spec in variants]


def forecast_spec(spec: specs.Spec, cache: Cache, history: History, made: set[str] | None = None,
                  memory: dict | None = None) -> dict:
    """The forecast of one validated spec; `made` collects the keys of tasks that will have run
    before it (earlier variants), and gets this spec's; `memory` keeps the memory estimates
    made so far, by model and shape, for the variants after it."""
    made = set() if made is None else made
    memory = {} if memory is None else memory
    plan = planner.build(spec)
    rows, run, total, unknown = [], 0, 0.0, False
    for task in plan.tasks:
        cached = task.key in made or cache.has(task.key)
        made.add(task.key)
        estimate = 0.0 if cached else history.estimate(task)
        row = {"name": task.name, "kind": task.kind, "model": _model_name(task.params), "cached": cached}
        clips = _clips(task.params)
        if clips is not None:
            row["clips"] = clips
        row.update({"estimate_s": None if estimate is None else round(estimate, 2),
                    "memory_bytes": _memory_bytes(task, memory)})
        rows.append(row)
        if not cached:
            run += 1
            if estimate is None:
                unknown = True
            else:
                total += estimate
    return {"name": spec.name, "tasks": rows, "run": run, "cached": len(rows) - run,
            "estimate_s": None if unknown else round(total, 2)}


def _model_name(task: tasks.AnyTask) -> str | None:
    """The model's name, an animatic's mode, or None (a chain's segment, an assembly)."""
    if task.model is not None:
        return task.model.name
    return task.mode if isinstance(task, tasks.Segment) else None


def _clips(task: tasks.AnyTask) -> list[dict] | None:
    """A segment's clips at the model's rate ([] for an animatic); None for other kinds."""
    if not isinstance(task, tasks.Segment):
        return None
    if task.form == tasks.ANIMATIC:
        return []
    return [{"frames": n, "fps": task.model_fps} for n in task.clips]


def _memory_bytes(task, seen: dict) -> int | None:
    """Peak memory of a task with every component on a GPU (farm/models/fit.py's estimate; a worker
    offloads or tiles when its device has less free); None for a task that loads no model.

    Estimated once per model, kind and shape in `seen`: each estimate reads the model's preset
    and its safetensors headers, 4 ms a task, so a 500-variant sweep (3,500 tasks, a dozen
    distinct estimates) spent 12 of its 13.7 s in `farm plan` here (2026-12-01)."""
    from ..models import fit

    model = task.params.model
    if model is None:
        return None
    key = (task.kind, task.params.shape, json.dumps(model.to_json(), sort_keys=True))
    if key not in seen:
        seen[key] = fit.task_memory(task.params)
    return seen[key]


class History:
    """Seconds that finished, executed tasks took in a queue database, by kind, model, size
    and steps, scaled by the work each did (frames generated, frames written)."""

    def __init__(self, path: Path):
        self.rates: dict[tuple, list[float]] = {}
        if not Path(path).is_file():
            return
        from ..queue.queue import Queue  # here: sqlite_utils costs 0.15 s to import, and a first plan has no history

        try:
            queue = Queue.read_only(path)
            try:
                rows = queue.run_times()
            finally:
                queue.close()
        except FarmError:  # no database, or not farm's: no history
            return

        for kind, model, params, seconds in rows:
            try:
                task = tasks.load(kind, params)
            except ValueError:  # a row of a kind or format this farm does not read: no history
                continue
            key, work = _signature(task, model)
            self.rates.setdefault(key, []).append(seconds / work)

    def estimate(self, task) -> float | None:
        key, work = _signature(task.params, task.model)
        seen = self.rates.get(key)
        return statistics.median(seen) * work if seen else None


def _signature(task: tasks.AnyTask, model: str | None) -> tuple[tuple, float]:
    """(what makes two tasks comparable, how much work this one is)."""
    size = (task.width, task.height)
    if isinstance(task, tasks.Clip) and model:  # a model's frames: seconds per generated frame
        return ("video", model, *size, task.steps), max(1, task.frames)
    if isinstance(task, tasks.Segment) and model:
        return ("video", model, *size, task.steps), max(1, task.native or task.frames)
    if isinstance(task, tasks.Keyframe):
        return ("keyframe", model, *size, task.steps), 1
    # ffmpeg's work (animatics, retiming, encoding): seconds per frame written
    what = None
    if isinstance(task, tasks.Segment):
        what = task.mode if task.form == tasks.ANIMATIC else "retime" if task.form == tasks.CHAIN else None
    return (task.kind, what, *size), max(1, task.frames)
