"""Render a spec end to end: validate, plan, enqueue, drain in this process, report.

`render_all()` is what `farm render` calls (one summary per output: a spec with a [sweep]
has one per variant); `render()` renders a spec without a sweep. Python code can call both.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from . import encode, home, plan as planner, spec as specs
from .cache import Cache
from .errors import FarmError
from .queue import Queue
from .worker import Worker


def render(path: str | Path, *, db: str | Path | None = None, progress: bool = False,
           worker: Worker | None = None) -> dict:
    """Render the job spec at `path`; return the summary that `farm render --json` prints.

    Tasks whose key is already in the cache are answered from it without loading a model.
    Pass a `worker` to reuse loaded pipelines across renders (and to read its call counts).
    """
    return render_spec(specs.load(path), db=db, progress=progress, worker=worker)


def render_all(path: str | Path, *, db: str | Path | None = None, progress: bool = False,
               worker: Worker | None = None, on_result=None) -> list[dict]:
    """Render every variant of the spec at `path` (one, without a [sweep]), in order.

    All variants are validated before any renders. One worker drains them one job after
    another, so a task shared by several variants (same key) runs in the first and is a
    cache hit in the rest, and a model loaded for one stays warm for the next.
    `on_result` is called with each summary as soon as its output is written."""
    variants = specs.load_all(path)
    queue = worker.queue if worker else Queue(db or home.db_path())
    worker = worker or Worker(queue, Cache(home.cache_dir()), name=f"render:{os.getpid()}", steps_progress=progress)
    results = []
    for spec in variants:
        results.append(render_spec(spec, progress=progress, worker=worker))
        if on_result:
            on_result(results[-1])
    return results


def render_spec(spec: specs.Spec, *, db: str | Path | None = None, progress: bool = False,
                worker: Worker | None = None) -> dict:
    """Render one validated spec; return its summary."""
    started = time.perf_counter()
    plan = planner.build(spec)
    queue = worker.queue if worker else Queue(db or home.db_path())
    worker = worker or Worker(queue, Cache(home.cache_dir()), name=f"render:{os.getpid()}", steps_progress=progress)
    job = queue.submit(plan)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan.tasks), desc=spec.name, unit="task", dynamic_ncols=True)

    def on_task(task, cached):
        if bar is not None and cached is not None:  # None: failed, and requeued or fatal
            bar.set_postfix_str(f"{task['name']}{' (cached)' if cached else ''}", refresh=False)
            bar.update(1)

    try:
        stats = worker.drain(job, on_task=on_task)
    except KeyboardInterrupt:
        queue.cancel(job, "interrupted")
        raise FarmError(f"Interrupted: job {job} canceled. Finished tasks are kept in the cache; "
                        f"render again to resume from them.", code=130) from None
    finally:
        if bar is not None:
            bar.close()

    record = queue.job(job)
    if record["state"] != "done":
        failed = [t for t in queue.tasks(job) if t["state"] == "failed"]
        why = failed[0]["error"] if failed else record["error"] or record["state"]
        name = failed[0]["name"] if failed else "the job"
        raise FarmError(f"Job {job} ({spec.name}) failed at {name}: {why}", code=1)

    out = spec.out
    info = encode.probe(out) if spec.codec != "png" else {
        "frames": len(list(out.glob("*.png"))), "fps": spec.fps, "width": spec.width, "height": spec.height}
    return {
        "job": job,
        "name": spec.name,
        "output": str(out),
        "frames": info["frames"],
        "fps": spec.fps,
        "size": [spec.width, spec.height],
        "codec": spec.codec,
        "seconds": round(time.perf_counter() - started, 3),
        "tasks": {"total": len(plan.tasks), "run": stats["run"], "cached": stats["cached"]},
    }
