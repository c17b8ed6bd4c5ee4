"""Render specs end to end: validate, plan, enqueue, then drain in this process or, when
`farm work` workers are running, wait for them; report what was made.

`render_all()` is what `farm render` calls (one summary per output: a spec with a [sweep]
has one per variant), `render()` renders a spec without a sweep, and `submit()` is what
`farm submit` calls. Python code can call them all.
"""

from __future__ import annotations

import os
import sqlite3
import time
from pathlib import Path

from .. import home
from ..errors import FarmError, Terminated, storage_error
from ..media import manifest
from ..plan import plan as planner
from ..queue.cache import Cache
from ..queue.queue import TERMINAL, Queue, gone
from ..spec import spec as specs
from . import publish as publisher
from .worker import Worker

DEFAULT_RETRIES = 2  # a failed task runs at most 3 times


def submit(paths: list[str | Path], *, db: str | Path | None = None, priority: int = 50,
           retries: int | None = None, force: bool = False) -> list[dict]:
    """Validate every spec (and every variant of a sweep) first: nothing is enqueued if any
    is invalid. Then enqueue each as a job; return one {"job", "name", "output", "tasks"} each."""
    loaded, problems = [], []
    for path in paths:
        try:
            loaded.extend(specs.load_all(path, force=force))
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


def render(path: str | Path, *, force: bool = False, **kwargs) -> dict:
    """Render the job spec at `path` (one without a [sweep]); return the summary that
    `farm render --json` prints. Keyword arguments as for `render_spec`."""
    return render_spec(specs.load(path, force=force), **kwargs)


def render_all(path: str | Path, *, db: str | Path | None = None, progress: bool = False,
               worker: Worker | None = None, on_result=None, force: bool = False, **kwargs) -> list[dict]:
    """Render every variant of the spec at `path` (one, without a [sweep]), in order.

    All variants are validated before any renders. One worker drains them one job after
    another, so a task shared by several variants (same key) runs in the first and is a
    cache hit in the rest, and a model loaded for one stays warm for the next. While `farm
    work` workers are running, each variant is left to them instead (see `render_spec`).
    `on_result` is called with each summary as soon as its output is written.
    `force` lets the outputs replace files farm did not write (see docs/usage.md: Safety)."""
    variants = specs.load_all(path, force=force)
    defer = worker is None
    queue = worker.queue if worker else Queue(db or home.db_path())
    worker = worker or _own_worker(queue, progress)
    results = []
    for spec in variants:
        results.append(render_spec(spec, db=queue.path, progress=progress, worker=worker, defer=defer, **kwargs))
        if on_result:
            on_result(results[-1])
    return results


def _own_worker(queue: Queue, progress: bool) -> Worker:
    return Worker(queue, Cache(home.cache_dir()), name=f"render:{os.getpid()}", steps_progress=progress,
                  role="render")


def _farm_workers(queue: Queue) -> list[dict]:
    """Live `farm work` workers that can take a new job: not stopping, heartbeat within their
    lease, and not known dead (`gone`: a SIGKILLed worker, or a Ray actor whose driver was, on
    this host; elsewhere a killed one's row stops counting when its lease runs out). Another
    `farm render`'s in-process worker never counts: it takes only its own job."""
    return [w for w in queue.workers() if w["state"] != "stopping" and w["role"] == "farm" and not gone(w)]


def render_spec(spec: specs.Spec, *, db: str | Path | None = None, progress: bool = False,
                worker: Worker | None = None, retries: int | None = None, priority: int = 50,
                defer: bool | None = None) -> dict:
    """Render one validated spec; return its summary.

    Tasks whose key is already in the cache are answered from it without loading a model.
    With `defer` (the default without a `worker`), the job is left to `farm work` workers
    while some are running, and drawn in this process whenever none is (none at the start,
    or all of them stopped or died meanwhile): no render waits on nobody. Pass a `worker`
    to reuse loaded pipelines across renders (and to read its call counts); it draws the
    job itself unless `defer=True`."""
    started = time.perf_counter()
    plan = planner.build(spec)
    defer = worker is None if defer is None else defer
    queue = worker.queue if worker else Queue(db or home.db_path())
    if queue.farm_paused():
        raise FarmError(f"The farm is paused (`farm pause`), so nothing would run {spec.name}: `farm resume` "
                        f"first.", code=1)
    worker = worker or _own_worker(queue, progress)

    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan.tasks), desc=spec.name, unit="task", dynamic_ncols=True)

    def on_task(task, cached):
        if bar is not None and cached is not None:  # None: failed, and requeued or fatal
            bar.set_postfix_str(f"{task['name']}{' (cached)' if cached else ''}", refresh=False)

    job = None
    try:
        with worker:  # registered before the job exists: a job whose owner is not registered is canceled
            job = queue.submit(plan, priority=priority, max_attempts=_attempts(spec, retries), owner=worker.name)
            _follow(queue, job, worker, defer, on_task, bar)
        _published(queue, job, worker)
    except KeyboardInterrupt as e:
        if job is None:
            raise
        queue.cancel(job, e.why if isinstance(e, Terminated) else "interrupted")
        what = f"Terminated ({e.signal})" if isinstance(e, Terminated) else "Interrupted"
        raise FarmError(f"{what}: job {job} canceled. Finished tasks are kept in the cache; "
                        f"render again to resume from them.", code=e.code if isinstance(e, Terminated) else 130) \
            from None
    except Exception as e:  # noqa: BLE001 - only a full or failing disk is handled here
        problem = storage_error(e, queue.path)
        if problem is None:
            raise
        if job is not None:
            try:
                queue.cancel(job, problem.message)
            except sqlite3.Error:
                pass  # the database cannot be written either: the job's owner is gone, so the next claim cancels it
        raise problem from None
    finally:
        if bar is not None:
            bar.close()

    record = queue.job(job)
    if record["state"] != "done":
        failed = [t for t in queue.tasks(job) if t["state"] == "failed"]
        why = failed[0]["error"] if failed else record["error"] or record["state"]
        name = failed[0]["name"] if failed else "the job"
        raise FarmError(f"Job {job} ({spec.name}) {record['state']} at {name}: {why}", code=1)

    out = spec.out
    result = publisher.outcome(queue, job)
    if result["event"] == publisher.SUPERSEDED:
        raise FarmError(f"Job {job} ({spec.name}) rendered, but a newer render of {out} (job {result['data']['by']}) "
                        f"was published first, so this one was not copied over it. Its video is in the cache: "
                        f"render the spec again to publish it.", code=1)
    if result["event"] == publisher.FAILED:
        why = result["data"].get("error")
        if result["data"].get("stage") == "sidecars":
            raise FarmError(f"Job {job} ({spec.name}) rendered {out}, but its contact sheet and manifest could not "
                            f"be written beside it: {why}.", code=1)
        raise FarmError(f"Job {job} ({spec.name}) rendered, but its video could not be written to {out}: {why}.",
                        code=1)
    sidecars = {"contact_sheet": str(manifest.sidecar(out, ".contact.png")), "manifest": str(manifest.path_for(out))}
    info = manifest.load(sidecars["manifest"])["video"]
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


def _follow(queue: Queue, job: int, worker: Worker, defer: bool, on_task, bar, poll: float = 0.25):
    """Until the job ends: draw what this process can take, or, while `farm work` workers
    are running and `defer` is set, let them. A task in the hands of a worker that died
    comes back at once (its pid gone from this host) or when its lease runs out, and is then
    drawn here or by them."""
    while True:
        record = queue.job(job)
        if bar is not None:
            bar.n = record["tasks_total"] - record["tasks_left"]
            bar.refresh()
        if record["state"] in TERMINAL:
            return
        if not (defer and _farm_workers(queue)):
            worker.drain(job, on_task=on_task, on_job_done=publisher.finish)
            if queue.job(job)["state"] in TERMINAL:
                continue
        time.sleep(poll)


PUBLISH_WAIT = 120.0  # seconds a done job's publishing worker is given before this process publishes it


def _published(queue: Queue, job: int, worker: Worker, poll: float = 0.1):
    """A done job is published by the worker that completed its assembly, just after. If that
    worker is gone (or takes longer than PUBLISH_WAIT), publish here: it is idempotent."""
    if queue.job(job)["state"] != "done":
        return
    deadline = time.time() + PUBLISH_WAIT
    while publisher.outcome(queue, job) is None:
        if not _farm_workers(queue) or time.time() > deadline:
            publisher.publish(queue, worker.cache, job, worker.name)
            return
        time.sleep(poll)
