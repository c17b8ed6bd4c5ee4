"""What a person may do to jobs and to the farm: cancel, retry, pause, resume, set priority.

One function per action over the queue, each refusing what cannot be done with a FarmError
(exit 2) that says why. `farm cancel` and the others (farm/cli.py) and `farm serve`'s buttons
(farm/review/serve/) call these, so a job answers the same whichever way it is asked."""

from __future__ import annotations

from ..errors import FarmError
from ..queue.queue import Queue

MIN_PRIORITY, MAX_PRIORITY = -1_000_000, 1_000_000


def job(queue: Queue, job_id: int) -> dict:
    """A job's record, or a FarmError naming the database when there is none."""
    record = queue.job(job_id)
    if record is None:
        raise FarmError(f"No job {job_id} in {queue.path}. `farm status` lists the jobs.", code=2)
    return record


def cancel(queue: Queue, job_id: int) -> str:
    record = job(queue, job_id)
    if not queue.cancel(job_id, "canceled by the user"):
        raise FarmError(f"Job {job_id} is already {record['state']}.", code=2)
    return f"job {job_id} canceled"


def retry(queue: Queue, job_id: int) -> str:
    job(queue, job_id)
    n = queue.retry(job_id)
    if not n:
        raise FarmError(f"Job {job_id} has no failed or canceled task to retry.", code=2)
    return f"job {job_id}: {n} task(s) queued again"


def pause(queue: Queue, job_id: int | None, paused: bool = True) -> str:
    """Pause (or resume) one job, or with no job the whole farm; tasks in flight finish."""
    if job_id is not None:
        job(queue, job_id)
    queue.pause(job_id, paused)
    return f"{f'job {job_id}' if job_id is not None else 'farm'} {'paused' if paused else 'resumed'}"


def priority(queue: Queue, job_id: int, value: int) -> str:
    job(queue, job_id)
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_PRIORITY <= value <= MAX_PRIORITY:
        raise FarmError(f"A priority is a whole number from {MIN_PRIORITY:,} to {MAX_PRIORITY:,}, got {value!r}.",
                        code=2)
    queue.set_priority(job_id, value)
    return f"job {job_id}: priority {value}"
