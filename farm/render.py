"""Render specs end to end: validate, plan, enqueue, then drain in this process or, when
`farm work` workers are running, wait for them; report what was made.

`render_all()` is what `farm render` calls (one summary per output: a spec with a [sweep]
has one per variant), `render()` renders a spec without a sweep, and `submit()` is what
`farm submit` calls. Python code can call them all.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from . import home, manifest, plan as planner, spec as specs
from .cache import Cache
from .errors import FarmError
from .queue import TERMINAL, Queue
from .worker import Worker

DEFAULT_RETRIES = 2  # a failed task runs at most 3 times


def submit(paths: list[str | Path], *, db: str | Path | None = None, priority: int = 50,
           retries: int | None = None) -> list[dict]:
    """Validate every spec (and every variant of a sweep) first: nothing is enqueued if any
    is invalid. Then enqueue each as a job; return one {"job", "name", "output", "tasks"} each."""
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.extend(specs.load_all(path))
        except FarmError as e:
            problems.append(e)
    if problems:
        raise FarmError("\n".join(e.message for e in problems), code=max(e.code for e in problems))
    queue = Queue(db or home.db_path())
    out = []
    for spec in loaded:
        plan = planner.build(spec)
        job = queue.submit(plan, priority=priority, max_attempts=_attempts(spec, retries))
        out.append({"job": job, "name": spec.name, "output": str(spec.out), "tasks": len(plan.tasks)})
    return out


def _attempts(spec, retries: int | None) -> int:
    return 1 + (retries if retries is not None else spec.retries if spec.retries is not None else DEFAULT_RETRIES)


def render(path: str | Path, **kwargs) -> dict:
    """Render the job spec at `path` (one without a [sweep]); return the summary that
    `farm render --json` prints. Keyword arguments as for `render_spec`."""
    return render_spec(specs.load(path), **kwargs)


def render_all(path: str | Path, *, db: str | Path | None = None, progress: bool = False,
               worker: Worker | None = None, on_result=None, **kwargs) -> list[dict]:
    """Render every variant of the spec at `path` (one, without a [sweep]), in order.

    All variants are validated before any renders. One worker drains them one job after
    another, so a task shared by several variants (same key) runs in the first and is a
    cache hit in the rest, and a model loaded for one stays warm for the next. When `farm
    work` workers are running, every variant is left to them instead.
    `on_result` is called with each summary as soon as its output is written."""
    variants = specs.load_all(path)
    queue = worker.queue if worker else Queue(db or home.db_path())
    if worker is None and not _farm_workers(queue):
        worker = Worker(queue, Cache(home.cache_dir()), name=f"render:{os.getpid()}", steps_progress=progress)
    results = []
    for spec in variants:
        results.append(render_spec(spec, db=queue.path, progress=progress, worker=worker, **kwargs))
        if on_result:
            on_result(results[-1])
    return results


def _farm_workers(queue: Queue) -> list[dict]:
    return [w for w in queue.workers() if w["state"] != "stopping"]


def render_spec(spec: specs.Spec, *, db: str | Path | None = None, progress: bool = False,
                worker: Worker | None = None, retries: int | None = None, priority: int = 50) -> dict:
    """Render one validated spec; return its summary.

    Tasks whose key is already in the cache are answered from it without loading a model.
    Without a `worker`, the job is drawn in this process, or left to `farm work` workers
    when some are running. Pass a `worker` to reuse loaded pipelines across renders (and to
    read its call counts)."""
    started = time.perf_counter()
    plan = planner.build(spec)
    queue = worker.queue if worker else Queue(db or home.db_path())
    farm_workers = _farm_workers(queue)
    job = queue.submit(plan, priority=priority, max_attempts=_attempts(spec, retries))

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan.tasks), desc=spec.name, unit="task", dynamic_ncols=True)

    def on_task(task, cached):
        if bar is not None and cached is not None:  # None: failed, and requeued or fatal
            bar.set_postfix_str(f"{task['name']}{' (cached)' if cached else ''}", refresh=False)
            bar.update(1)

    try:
        if farm_workers and worker is None:
            _wait(queue, job, bar)
        else:
            worker = worker or Worker(queue, Cache(home.cache_dir()), name=f"render:{os.getpid()}",
                                      steps_progress=progress)
            with worker:
                worker.drain(job, on_task=on_task)
            if queue.job(job)["state"] not in TERMINAL:  # what is left is in other workers' hands
                _wait(queue, job, None)
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
        raise FarmError(f"Job {job} ({spec.name}) {record['state']} at {name}: {why}", code=1)

    # The worker that finished the assembly wrote the contact sheet and manifest beside the
    # video (they need every task's finish time, so they are not a task's cached output); the
    # manifest also holds what ffmpeg decoded from the video.
    out = spec.out
    sidecars = {"contact_sheet": str(manifest.sidecar(out, ".contact.png")), "manifest": str(manifest.path_for(out))}
    try:
        written = manifest.load(sidecars["manifest"])
    except FarmError:
        written = None
    if not written or written["job"]["id"] != job or not Path(sidecars["contact_sheet"]).is_file():
        failed = [e for e in queue.events(job) if e["event"] == "job.sidecars_failed"]
        why = json.loads(failed[-1]["data"])["error"] if failed else "they are missing"
        raise FarmError(f"Job {job} ({spec.name}) rendered {out}, but its contact sheet and manifest could not "
                        f"be written beside it: {why}.", code=1)
    info = written["video"]
    tasks = queue.tasks(job)
    return {
        "job": job,
        "name": spec.name,
        "output": str(out),
        "frames": info["frames"],
        "fps": spec.fps,
        "size": [spec.width, spec.height],
        "codec": spec.codec,
        "seconds": round(time.perf_counter() - started, 3),
        "tasks": {"total": len(tasks), "run": sum(t["cached"] == 0 for t in tasks),
                  "cached": sum(t["cached"] == 1 for t in tasks)},
        **sidecars,
    }


def _wait(queue: Queue, job: int, bar, poll: float = 0.25):
    """Workers are running: let them draw the job, following it until it ends."""
    seen = 0
    while True:
        record = queue.job(job)
        done = record["tasks_total"] - record["tasks_left"]
        if bar is not None and done > seen:
            bar.update(done - seen)
            seen = done
        if record["state"] in TERMINAL:
            break
        time.sleep(poll)
    # The worker writes the contact sheet and manifest just after the job is done.
    deadline = time.time() + 60
    while record["state"] == "done" and time.time() < deadline:
        try:
            if manifest.load(manifest.path_for(record["output"]))["job"]["id"] == job:
                return
        except FarmError:
            pass
        if any(e["event"] == "job.sidecars_failed" for e in queue.events(job)):
            return
        time.sleep(poll)
