"""The worker: claim a task, answer it from the cache or run it, report back.

A worker is the queue loop around a runner (farm/run/runner.py: the loaded pipelines and the
task handlers). It tells the queue which models its runner holds so that claims can prefer
tasks for them. A heartbeat thread renews the lease of the task in flight; if the worker
dies, the task goes back to the queue: at the next claim when its pid is gone from this host,
else when its lease runs out. What follows a job's end (publishing its video, pruning the
cache) is not the worker's: whoever drains passes it in as `on_job_done` (`farm render`,
`farm work`, and `farm work --ray`'s driver pass `publish.finish`).
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import threading
import time

from ..errors import FarmError
from ..queue.cache import Cache
from ..queue.queue import Queue
from .runner import Runner


class LeaseLost(Exception):
    """This worker no longer holds the task it is running (its lease expired and another
    attempt took it, or its job was canceled): stop, publish nothing."""


class Worker:
    def __init__(self, queue: Queue, runner: Runner | Cache, *, name: str | None = None, lease: float = 60.0,
                 label: str | None = None, role: str = "farm", **options):
        """`runner` runs the tasks; given a Cache instead, the worker makes its own Runner on
        it with `options` (device, memory_budget, max_warm, steps_progress)."""
        self.queue = queue
        if isinstance(runner, Runner) and options:
            raise TypeError(f"Worker: {', '.join(options)} are the runner's options; give them to Runner")
        self.runner = runner if isinstance(runner, Runner) else Runner(runner, **options)
        self.cache = self.runner.cache
        self.role = role  # "farm" (`farm work`) or "render" (a `farm render` drawing its own job)
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self.label = label or self.runner.device  # what status shows: the physical GPU ("cuda:3")
        self.stopping = False  # set on SIGINT/SIGTERM: finish the task in flight, claim no more
        self.current: dict | None = None
        self.lost = threading.Event()  # set by the heartbeat: the task in flight is no longer ours
        self._beat_stop = threading.Event()
        self._beat: threading.Thread | None = None

    # --- life cycle ---------------------------------------------------------------------

    def __enter__(self):
        self.queue.register(self.name, device=self.label, lease=self.lease, role=self.role)
        self._beat_stop = threading.Event()  # a fresh one each time: a sweep re-enters the worker
        self._beat = threading.Thread(target=self._heartbeat, args=(self._beat_stop,),
                                      name=f"heartbeat-{self.name}", daemon=True)
        self._beat.start()
        return self

    def __exit__(self, *exc):
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        self.queue.unregister(self.name)
        return False

    def _heartbeat(self, stop: threading.Event):
        """Renew the lease of the task in flight every third of a lease, on its own connection.

        The queue's answer matters: when the lease is no longer ours, `lost` is set and the
        task is abandoned at its next step. A database error does not end the thread: it is
        reported once and retried; if it lasts a whole lease, others may have taken the task
        by then, so it counts as lost too."""
        queue, failing_since = None, None
        try:
            while not stop.wait(max(self.lease / 3, 0.05)):
                task = self.current
                try:
                    queue = queue or Queue(self.queue.path)
                    held = queue.heartbeat(self.name, models=sorted(self.held()), task=task, lease=self.lease,
                                           state="stopping" if self.stopping else None)
                    failing_since = None
                except (sqlite3.Error, FarmError) as e:
                    now = time.time()
                    if failing_since is None:
                        failing_since = now
                        print(f"farm: worker {self.name}: heartbeat failed ({e}); retrying", file=sys.stderr)
                    if task is not None and now - failing_since > self.lease and self.current is task:
                        self.lost.set()
                    continue
                if task is not None and not held and self.current is task:
                    self.lost.set()
        finally:
            if queue is not None:
                queue.close()

    def check_lease(self, *_):
        """Raise LeaseLost if the task in flight is no longer this worker's (called between
        denoising steps and before an output is published)."""
        if self.lost.is_set():
            raise LeaseLost()

    # --- the loop -----------------------------------------------------------------------

    def drain(self, job: int | None = None, on_task=None, *, until_empty: bool = True, poll: float = 0.5,
              on_job_done=None) -> dict:
        """Run claimable tasks (of one job, or any) until none is left (or, with
        until_empty=False, until stopped); return counts. `on_job_done(queue, cache, job,
        worker name)` is called when the queue accepts the completion of a job's assembly
        (and only then: a canceled job or a lost attempt publishes nothing)."""
        stats = {"run": 0, "cached": 0, "failed": 0, "lost": 0}
        claim = {"lease": self.lease, "job": job, "device": self.label}
        task = None
        while True:
            if task is None:
                if self.stopping:
                    return stats
                task = self.queue.claim(self.name, models=self.held(), **claim)
            if task is None:
                if job is not None:
                    wake = self.queue.next_wakeup(job)
                    if wake is None:  # nothing left that this worker can take (done, or others' now)
                        return stats
                    time.sleep(max(0.0, min(wake - time.time(), poll * 4)))  # a retry is backing off
                elif until_empty and self.queue.pending() == 0:
                    return stats
                else:
                    time.sleep(poll)
                continue
            started = time.perf_counter()
            outcome = self.execute(task)
            stats[outcome] += 1
            cached, following, completed = outcome == "cached", None, False
            if outcome in ("cached", "run"):
                seconds = time.perf_counter() - started
                if self.stopping:
                    completed = self.queue.complete(task, self.name, cached=cached, seconds=seconds)
                else:  # report and take the next task in one transaction
                    completed, following = self.queue.complete_and_claim(
                        task, self.name, cached=cached, seconds=seconds, models=self.held(), **claim)
            if completed and task["kind"] == "assemble" and on_job_done is not None:
                on_job_done(self.queue, self.cache, task["job_id"], self.name)
            if on_task:
                on_task(task, cached if completed else None)
            task = following

    def execute(self, task: dict) -> str:
        """Answer one claimed task without reporting success (failures are reported here):
        "cached", "run", "failed", or "lost" (the lease went to another attempt, or the job
        was canceled: the task was abandoned and nothing was published)."""
        self.current = task
        self.lost.clear()
        try:
            if self.cached(task):
                return "cached"
            self.runner.run(task, on_step=self.check_lease)
            return "run"
        except LeaseLost:
            self.queue.record(task["job_id"], task["id"], "task.abandoned", self.name,
                              {"attempt": task["attempts"], "why": "its lease is no longer this worker's"})
            return "lost"
        except KeyboardInterrupt:
            self.queue.release(task, self.name)
            raise
        except Exception as e:  # noqa: BLE001 - classified by `failure`
            error, retry = self.runner.failure(task, e)
            self.queue.fail(task, self.name, error, retry=retry)
        finally:
            self.current = None
        return "failed"

    def cached(self, task: dict) -> bool:
        """Is the task's output in the cache, whole? (A hit counts as a use; an entry damaged
        since it was written is discarded, never reused.)"""
        problem = self.cache.check(task["key"])
        if problem is None:
            self.cache.touch(task["key"])
            return True
        if problem != "missing":
            self.queue.record(task["job_id"], task["id"], "cache.discarded", self.name,
                              {"key": task["key"], "problem": problem})
            self.cache.discard(task["key"])
        return False

    def held(self) -> frozenset:
        """Identities of the models its runner holds: what claims prefer."""
        return self.runner.held()
