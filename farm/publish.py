"""Finishing a job: copy its assembled video out of the cache to the job's output path, then
write its contact sheet and manifest beside it.

This is the last step of the flow and has one owner: the worker whose `complete` of the
assembly was accepted by the queue (so a canceled job, or an attempt whose lease was taken
over, never writes anything), or, if that worker died before publishing, whoever waits for
the job (`farm render`). It is idempotent, and it ends with one event, `job.published` or
`job.publish_failed`, which is what a waiting `farm render` follows.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from . import encode, files, manifest, plan
from .cache import Cache
from .errors import FarmError
from .queue import Queue

PUBLISHED, FAILED = "job.published", "job.publish_failed"


def assembly(queue: Queue, job: int) -> dict | None:
    """The job's assemble task."""
    return plan.assembly(queue.tasks(job))


def publish(queue: Queue, cache: Cache, job: int, worker: str | None = None) -> dict | None:
    """Publish a done job's outputs; return the sidecars' paths, or None if it failed (the
    reason is in the `job.publish_failed` event)."""
    record = queue.job(job)
    if record is None or record["state"] != "done":
        return None
    task = assembly(queue, job)
    out = Path(record["output"])
    p = task["params"]
    stage = "video"
    try:
        problem = cache.check(task["key"])
        if problem is not None:
            raise FarmError(f"the assembled video in the cache is unusable ({problem}); render again")
        src, video = manifest.assembled(cache, task)
        if src.is_dir():
            encode.encode(sorted(src.glob("*.png")), p["fps"], "png", None, out)
            video = video or {"frames": len(list(out.glob("*.png"))), "fps": p["fps"], "width": p["width"],
                              "height": p["height"]}
        else:
            with files.atomic_path(out) as tmp:
                shutil.copyfile(src, tmp)
            video = video or encode.probe(out)  # an entry from before its info was recorded
        stage = "sidecars"
        sidecars = manifest.write_sidecars(queue, job, cache, video={"codec": p["codec"], **video})
    except (OSError, FarmError) as e:
        why = e.message if isinstance(e, FarmError) else f"{type(e).__name__}: {e}"
        queue.record(job, task["id"], FAILED, worker, {"error": why, "stage": stage})
        return None
    queue.record(job, task["id"], PUBLISHED, worker, {"output": str(out), **sidecars})
    return sidecars


def outcome(queue: Queue, job: int) -> dict | None:
    """The last publish event of a job ({"event", "data"}), or None if it was not published yet."""
    import json

    for e in reversed(queue.events(job)):
        if e["event"] in (PUBLISHED, FAILED):
            return {"event": e["event"], "data": json.loads(e["data"]) if e["data"] else {}}
    return None
