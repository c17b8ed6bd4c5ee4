"""Finishing a job: copy its assembled video out of the cache to the job's output path, then
write its contact sheet and manifest beside it.

This is the last step of the flow and has one owner: the worker whose `complete` of the
assembly was accepted by the queue (so a canceled job, or an attempt whose lease was taken
over, never writes anything), or, if that worker died before publishing, whoever waits for
the job (`farm render`). It is idempotent, and it ends with one event, `job.published`,
`job.superseded` or `job.publish_failed`, which is what a waiting `farm render` follows.

An older job never replaces a newer one's video: a job may write its output only while no
job submitted after it for the same output has been published. One that finds such a job is
*superseded*: its video stays in the cache (its work is not lost; rendering its spec again
publishes it from there), nothing is copied out, and the newer video's manifest lists it
under "superseded". Publishes of one output path take turns (a lock file beside the queue
database), so the check and the copy cannot interleave with another publish.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

from .. import files
from ..errors import FarmError
from ..media import encode, manifest
from ..plan import plan, tasks
from ..queue.cache import Cache
from ..queue.queue import Queue

PUBLISHED, SUPERSEDED, FAILED = "job.published", "job.superseded", "job.publish_failed"


def assembly(queue: Queue, job: int) -> dict | None:
    """The job's assemble task."""
    return plan.assembly(queue.tasks(job))


def publish(queue: Queue, cache: Cache, job: int, worker: str | None = None) -> dict | None:
    """Publish a done job's outputs; return the sidecars' paths, or None if it was superseded
    or failed (the reason is in the `job.superseded` or `job.publish_failed` event)."""
    record = queue.job(job)
    if record is None or record["state"] != "done":
        return None
    out = Path(record["output"])
    with _turn(queue, out):
        newer = queue.newer_published(job)
        if newer is not None:
            _superseded(queue, job, worker, out, newer)
            return None
        return _publish(queue, cache, job, worker, out)


def finish(queue: Queue, cache: Cache, job: int, worker: str | None = None):
    """What follows the accepted completion of a job's assembly, wherever it ran (the job-done
    hook of `farm render`, `farm work` and its Ray driver): publish the job, then prune the
    cache to its configured size (`cache_max_size`), if one is set."""
    from . import gc

    publish(queue, cache, job, worker)
    limit = gc.configured_max_size()
    if limit is not None:
        gc.collect(queue, cache, max_size=limit)


def _publish(queue: Queue, cache: Cache, job: int, worker: str | None, out: Path) -> dict | None:
    task = assembly(queue, job)
    p = tasks.of(task)
    stage = "video"
    try:
        problem = cache.check(task["key"])
        if problem is not None:
            raise FarmError(f"the assembled video in the cache is unusable ({problem}); render again")
        src, video = manifest.assembled(cache, task)
        if src.is_dir():
            encode.encode(sorted(src.glob("*.png")), p.fps, "png", None, out)
            video = video or {"frames": len(list(out.glob("*.png"))), "fps": p.fps, "width": p.width,
                              "height": p.height}
        else:
            with files.atomic_path(out) as tmp:
                shutil.copyfile(src, tmp)
            video = video or encode.probe(out)  # an entry from before its info was recorded
        stage = "sidecars"
        sidecars = manifest.write_sidecars(queue, job, cache, video={"codec": p.codec, **video})
    except (OSError, FarmError) as e:
        why = e.message if isinstance(e, FarmError) else f"{type(e).__name__}: {e}"
        queue.published(job, "failed", worker, {"error": why, "stage": stage})
        return None
    queue.published(job, "published", worker, {"output": str(out), **sidecars})
    return sidecars


def _superseded(queue: Queue, job: int, worker: str | None, out: Path, newer: int):
    """Leave the newer job's video where it is; say so in the events and in its manifest."""
    data = {"output": str(out), "by": newer,
            "why": f"job {newer}, submitted after this one for the same output, was published first"}
    queue.published(job, "superseded", worker, data)
    path = manifest.path_for(out)
    try:
        current = manifest.load(path)
    except FarmError:
        return  # no manifest of farm's there (removed, or written by hand): nothing to annotate
    if current["job"]["id"] != newer:
        return
    record = queue.job(job)
    current.setdefault("superseded", []).append(
        {"job": job, "name": record["name"], "finished_at": record["finished_at"],
         "note": "finished after this video was published; its own video stays in the cache, not copied here"})
    try:
        manifest.write_json(current, path)
    except OSError:
        pass  # the event already says it; a manifest we cannot rewrite keeps its older, still true, content


@contextmanager
def _turn(queue: Queue, out: Path):
    """Hold the lock of one output path (a file beside the queue database, keyed by the path)."""
    if str(queue.path) == ":memory:":  # one process's own database: no one else publishes
        yield
        return
    folder = queue.path.parent / "locks"
    folder.mkdir(parents=True, exist_ok=True)
    name = hashlib.sha256(str(out).encode("utf-8", "surrogateescape")).hexdigest()[:32]
    with open(folder / f"out-{name}.lock", "a+b") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def outcome(queue: Queue, job: int) -> dict | None:
    """The last publish event of a job ({"event", "data"}), or None if it was not published yet.
    `jobs.published` says whether there is one, so a render waiting on its publish (polled
    every 0.1 s) reads one row, not the job's every event, until there is."""
    record = queue.job(job)
    if record is None or record["published"] is None:
        return None
    for e in reversed(queue.events(job)):
        if e["event"] in (PUBLISHED, SUPERSEDED, FAILED):
            return {"event": e["event"], "data": json.loads(e["data"]) if e["data"] else {}}
    return None
