"""The durable queue: jobs, tasks, dependencies, workers and events in one SQLite database.

WAL mode, short transactions, and schema versions in `PRAGMA user_version` with a list of
migrations applied in order. Every verb that changes state is one `BEGIN IMMEDIATE`
transaction, so two workers can never claim the same task, and a process killed at any
point leaves the database as it was before or after that verb, never in between.

The scheduling rule (`claim`):
1. A task is runnable when it is queued and its retry backoff has passed, its job is
   neither paused, canceled nor finished, the farm is not paused, every task it depends
   on is done, and the claiming worker is not blocklisted for its kind in its job.
   Running tasks whose lease expired are first put back in the queue.
2. Highest priority first, then oldest (lowest id).
3. Warm models: among the first AFFINITY_WINDOW runnable tasks *of that same top
   priority*, a worker that holds models takes the first one whose model it holds (or
   that needs no model). One that holds none of theirs must load a model anyway: it takes
   the first whose model no other worker is running (or that needs none), so that workers
   spread over models instead of all loading the same one; else the first. (So a worker
   holding nothing takes the head unless another worker runs the head's model.) Affinity
   never passes over a higher priority, and it may pass over a given task at most
   MAX_SKIPS times; after that the task is taken in strict order. So no task waits forever for a warm worker.

Measured by scripts/bench_scheduler.py (451 simulated tasks, 14 models, 4 workers holding
2 each, a load costing 10 tasks): against FIFO, 0.19x the model loads and 0.43x the
makespan; with only the first preference and a window of 32 it was 0.74x and 0.81x.
"""

from __future__ import annotations

import functools
import json
import os
import socket
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from ..errors import FarmError

# Each entry moves the schema from version i to i + 1. Never edit one that has shipped;
# append a new one.
MIGRATIONS = [
    """
    CREATE TABLE jobs (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        spec_path TEXT,
        spec_digest TEXT,
        output TEXT,
        state TEXT NOT NULL DEFAULT 'queued',   -- queued, running, done, failed, canceled
        paused INTEGER NOT NULL DEFAULT 0,
        priority INTEGER NOT NULL DEFAULT 50,
        tasks_total INTEGER NOT NULL DEFAULT 0,
        tasks_left INTEGER NOT NULL DEFAULT 0,  -- not yet done: 0 means the job is done
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL
    );
    CREATE TABLE tasks (
        id INTEGER PRIMARY KEY,
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        kind TEXT NOT NULL,
        key TEXT NOT NULL,
        model TEXT,                              -- identity of the model it loads, for affinity
        params TEXT NOT NULL,                    -- JSON
        state TEXT NOT NULL DEFAULT 'queued',    -- queued, running, done, failed, canceled
        priority INTEGER NOT NULL DEFAULT 50,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL DEFAULT 3,
        skipped INTEGER NOT NULL DEFAULT 0,      -- times affinity passed over it
        not_before REAL,                         -- retry backoff
        lease_owner TEXT,
        lease_expires REAL,
        cached INTEGER,                          -- 1: answered from the cache, 0: executed
        worker TEXT,
        device TEXT,
        error TEXT,
        created_at REAL NOT NULL,
        started_at REAL,
        finished_at REAL,
        UNIQUE (job_id, name)
    );
    CREATE INDEX tasks_claim ON tasks (priority DESC, id) WHERE state = 'queued';
    CREATE INDEX tasks_lease ON tasks (lease_expires) WHERE state = 'running';
    CREATE INDEX tasks_job ON tasks (job_id, state);
    CREATE TABLE deps (
        task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        needs INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        PRIMARY KEY (task_id, needs)
    ) WITHOUT ROWID;
    CREATE INDEX deps_needs ON deps (needs);
    CREATE TABLE workers (
        name TEXT PRIMARY KEY,
        pid INTEGER,
        host TEXT,
        device TEXT,
        models TEXT NOT NULL DEFAULT '[]',       -- JSON list of loaded model identities
        state TEXT NOT NULL DEFAULT 'working',   -- working, stopping (its task in flight: tasks.lease_owner)
        lease REAL NOT NULL DEFAULT 60,
        started_at REAL NOT NULL,
        heartbeat_at REAL NOT NULL
    );
    CREATE TABLE blocklist (
        job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        worker TEXT NOT NULL,
        kind TEXT NOT NULL,
        failures INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, worker, kind)
    ) WITHOUT ROWID;
    CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT);
    CREATE TABLE events (
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        job_id INTEGER,
        task_id INTEGER,
        event TEXT NOT NULL,
        worker TEXT,
        data TEXT
    );
    CREATE INDEX events_job ON events (job_id, id);
    """,
    # Who a worker works for: `farm work` ("farm") takes any job; a `farm render` drawing its
    # own job in-process ("render") takes only that one, so no render waits on another's.
    """
    ALTER TABLE workers ADD COLUMN role TEXT NOT NULL DEFAULT 'farm'
    """,
    # The Ray node a worker (an actor of `farm work --ray`) runs on; NULL for local workers.
    """
    ALTER TABLE workers ADD COLUMN node TEXT
    """,
    # A job submitted by `farm render` is that render's own (`owner`: its worker's name): it is
    # canceled when the render is gone (killed, its terminal closed, out of memory), never
    # finished and published by `farm work` behind a newer render's back. `published` says how a
    # done job ended: NULL until its publish ran, then 'published', 'superseded' (a job submitted
    # later for the same output was published first: this one's video stays in the cache) or
    # 'failed'. Jobs done before this migration count as published.
    """
    ALTER TABLE jobs ADD COLUMN owner TEXT;
    ALTER TABLE jobs ADD COLUMN published TEXT;
    UPDATE jobs SET published = 'published' WHERE state = 'done';
    CREATE INDEX jobs_output ON jobs (output, id)
    """,
    # The process that heartbeats for a worker when it is not the worker itself: a Ray actor's
    # driver (`farm work --ray`), whose death `farm status` sees on its host at once; NULL for
    # local workers.
    """
    ALTER TABLE workers ADD COLUMN driver_pid INTEGER;
    ALTER TABLE workers ADD COLUMN driver_host TEXT
    """,
    # The claim's window reads the index alone, no table row per task: a 128-task scan took
    # 50 us where it took 67 (with the blocklist check made uncorrelated; 2026-12-01).
    """
    DROP INDEX tasks_claim;
    CREATE INDEX tasks_claim ON tasks (priority DESC, id, job_id, model, skipped, kind, not_before, state)
        WHERE state = 'queued'
    """,
    # The pid namespace (Linux's /proc/self/ns/pid) of the process `gone` checks for a worker:
    # two containers on one host may share its name (host networking) but not their pids, and a
    # pid of the other one's is no process here. NULL where there is none (macOS), or unknown.
    """
    ALTER TABLE workers ADD COLUMN pidns TEXT
    """,
]
SCHEMA_VERSION = len(MIGRATIONS)

# How far down the queue a worker looks for a task of a model it holds, or of one no other worker
# runs: bench_scheduler.py's loads against FIFO were 0.28x with 32, 0.22x with 64, 0.19x with 128.
AFFINITY_WINDOW = 128
MAX_SKIPS = 32  # affinity passes over one task at most this many times
BLOCK_AFTER = 3  # failures of one kind of task in one job before a worker stops taking it (Flamenco's default)
BACKOFF_CAP = 60.0  # seconds; a retry waits 1, 2, 4 ... seconds up to this
TERMINAL = ("done", "failed", "canceled")

EXPIRY_EVERY = 1.0  # seconds between sweeps for expired leases, per connection

# The runnable tasks in queue order, as far as the affinity window reaches.
WINDOW = """
SELECT t.id, t.priority, t.model, t.skipped, j.state AS job_state FROM tasks t JOIN jobs j ON j.id = t.job_id
WHERE t.state = 'queued' AND (t.not_before IS NULL OR t.not_before <= :now)
  AND j.state IN ('queued', 'running') AND j.paused = 0
  AND (:job IS NULL OR t.job_id = :job)
  AND NOT EXISTS (SELECT 1 FROM deps d JOIN tasks u ON u.id = d.needs
                  WHERE d.task_id = t.id AND u.state != 'done')
  AND (t.job_id, t.kind) NOT IN (SELECT job_id, kind FROM blocklist WHERE worker = :worker
                                 AND failures >= :block_after)
  AND NOT EXISTS (SELECT 1 FROM settings WHERE key = 'paused' AND value = '1')
ORDER BY t.priority DESC, t.id
LIMIT :window
"""
HEAD = f"SELECT * FROM ({WINDOW}) LIMIT 1"


@functools.lru_cache(maxsize=64)
def probe(held: int, busy: int, free: bool) -> str:
    """The first task of the window warm here (model in :h0, :h1 ... or none), or with `free`
    warm or free (model none or not in :b0, :b1 ...). The models are bound one by one: IN
    over json_each(...) cost 68 us a 128-task scan, a list 56."""
    warm = f"model IS NULL OR model IN ({', '.join(f':h{i}' for i in range(held))})"
    cond = f"{warm} OR model NOT IN ({', '.join(f':b{i}' for i in range(busy))})" if free else warm
    return f"SELECT * FROM ({WINDOW}) WHERE {cond} LIMIT 1"


# The models of tasks other workers are running (few rows: the partial index tasks_lease).
BUSY = "SELECT DISTINCT model FROM tasks WHERE state = 'running' AND model IS NOT NULL AND lease_owner != ?"


def choose(candidates, models: set, busy: set = frozenset()) -> tuple[dict | None, int | None]:
    """Pick from runnable tasks in queue order; return (task row, id passed over or None).

    `models` are the models this worker holds, `busy` those of tasks other workers are
    running now. `candidates` is the window, or any part of it in queue order that holds
    its head, its first task warm here or not busy, and its first warm one (what a claim
    reads: `Queue._candidates`); it may be a lazy cursor, read only as far as the rule
    needs. Pure, so the rule is testable on its own: see the module docstring."""
    rows = iter(candidates)
    head = next(rows, None)
    if head is None:
        return None, None
    if head["model"] is None or head["model"] in models or head["skipped"] >= MAX_SKIPS:
        return head, None
    if not models and head["model"] not in busy:
        return head, None  # nothing warm here, and no other worker runs the head's model: strict order
    cold = None if head["model"] in busy else head  # what to take if nothing here is warm
    for c in rows:
        if c["priority"] != head["priority"]:
            break
        if models and (c["model"] is None or c["model"] in models):
            return c, head["id"]
        if cold is None and c["model"] not in busy:  # a model no other worker runs, or none at all
            cold = c
            if not models:
                break
    if cold is None or cold is head:
        return head, None
    return cold, head["id"]


class Queue:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 60000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable across process kills
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute("PRAGMA mmap_size = 268435456")
        except (OSError, sqlite3.Error) as e:
            raise FarmError(f"Cannot open the queue database {self.path}: {e}") from None
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self._next_expiry = 0.0
        self._migrate()

    def _migrate(self):
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FarmError(f"The queue database {self.path} has schema version {version}, newer than this "
                            f"farm understands ({SCHEMA_VERSION}). Upgrade farm, or use another FARM_HOME.")
        if version == SCHEMA_VERSION:
            return
        with self.transaction():
            version = self.conn.execute("PRAGMA user_version").fetchone()[0]  # another process may have won
            for i in range(version, SCHEMA_VERSION):
                for statement in MIGRATIONS[i].split(";\n"):  # one statement per line end: keep ';' out of comments
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {i + 1}")

    @classmethod
    def read_only(cls, path: Path | str) -> Queue:
        """The database at `path` opened for reading only, as `farm plan` reads its history:
        nothing is created, migrated or written (a missing file is an error, not a new queue).
        Its verbs that write fail; FarmError if it cannot be opened."""
        queue = cls.__new__(cls)
        queue.path = Path(path)
        try:
            conn = sqlite3.connect(f"file:{queue.path.resolve()}?mode=ro", uri=True, timeout=5,
                                   isolation_level=None, check_same_thread=False)
            conn.row_factory = sqlite3.Row
            queue.db = sqlite_utils.Database(conn)
        except (OSError, sqlite3.Error) as e:
            raise FarmError(f"Cannot open the queue database {queue.path}: {e}") from None
        queue.conn, queue._next_expiry = conn, float("inf")  # never sweeps: that writes
        return queue

    def transaction(self):
        return _Transaction(self.conn)

    def close(self):
        self.conn.close()

    # --- jobs -------------------------------------------------------------------------

    def submit(self, plan, *, priority: int = 50, max_attempts: int = 3, owner: str | None = None) -> int:
        """Enqueue a plan as a new job with all its tasks and dependencies, atomically.

        `owner`: the registered worker of the `farm render` whose job this is; the job is
        canceled when that worker is gone (see `_orphans`)."""
        spec, now = plan.spec, time.time()
        n = len(plan.tasks)
        # Plain INSERTs inside our own transaction: sqlite-utils' insert() commits on its own.
        with self.transaction():
            job = self.conn.execute(
                "INSERT INTO jobs (name, spec_path, spec_digest, output, state, priority, tasks_total, tasks_left,"
                " created_at, owner) VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?)",
                (spec.name, str(spec.path), spec.digest, str(spec.out), priority, n, n, now, owner)).lastrowid
            ids = {}
            for t in plan.tasks:
                ids[t.name] = self.conn.execute(
                    "INSERT INTO tasks (job_id, name, kind, key, model, params, state, priority, max_attempts, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                    (job, t.name, t.kind, t.key, t.model, json.dumps(t.stored()), priority, max_attempts, now),
                ).lastrowid
            self.conn.executemany("INSERT INTO deps (task_id, needs) VALUES (?, ?)",
                                  [(ids[t.name], ids[d]) for t in plan.tasks for d in t.deps])
            self._event(job, None, "job.queued", None, {"tasks": n, "priority": priority})
        return job

    def cancel(self, job: int, reason: str | None = None) -> bool:
        with self.transaction():
            return self._cancel(job, reason, time.time())

    def _cancel(self, job: int, reason: str | None, now: float) -> bool:
        n = self.conn.execute("UPDATE jobs SET state = 'canceled', error = coalesce(?, error), finished_at = ? "
                              "WHERE id = ? AND state IN ('queued', 'running')", (reason, now, job)).rowcount
        if n:
            self.conn.execute("UPDATE tasks SET state = 'canceled', lease_owner = NULL, lease_expires = NULL "
                              "WHERE job_id = ? AND state IN ('queued', 'running')", (job,))
            self._event(job, None, "job.canceled", None, {"reason": reason} if reason else None)
        return bool(n)

    def retry(self, job: int) -> int:
        """Requeue a failed or canceled job's unfinished tasks with fresh attempts; return how many."""
        with self.transaction():
            n = self.conn.execute("UPDATE tasks SET state = 'queued', attempts = 0, not_before = NULL, error = NULL,"
                                  " skipped = 0 WHERE job_id = ? AND state IN ('failed', 'canceled')", (job,)).rowcount
            if n:
                self.conn.execute("DELETE FROM blocklist WHERE job_id = ?", (job,))
                self.conn.execute("UPDATE jobs SET state = CASE WHEN started_at IS NULL THEN 'queued' ELSE 'running'"
                                  " END, error = NULL, finished_at = NULL WHERE id = ?", (job,))
                self._event(job, None, "job.retried", None, {"tasks": n})
        return n

    def pause(self, job: int | None = None, paused: bool = True):
        """Pause (or resume) one job, or with no job the whole farm: workers stop claiming;
        tasks in flight finish."""
        with self.transaction():
            if job is None:
                self.conn.execute("INSERT OR REPLACE INTO settings (key, value) VALUES ('paused', ?)",
                                  ("1" if paused else "0",))
            else:
                self.conn.execute("UPDATE jobs SET paused = ? WHERE id = ?", (int(paused), job))
            self._event(job, None, "job.paused" if paused else "job.resumed", None, None)

    def farm_paused(self) -> bool:
        row = self.conn.execute("SELECT value FROM settings WHERE key = 'paused'").fetchone()
        return bool(row and row[0] == "1")

    def set_priority(self, job: int, priority: int):
        with self.transaction():
            self.conn.execute("UPDATE jobs SET priority = ? WHERE id = ?", (priority, job))
            self.conn.execute("UPDATE tasks SET priority = ? WHERE job_id = ?", (priority, job))
            self._event(job, None, "job.priority", None, {"priority": priority})

    # --- tasks ------------------------------------------------------------------------

    def claim(self, worker: str, *, lease: float = 60.0, job: int | None = None, device: str | None = None,
              models: set | frozenset = frozenset()):
        """Claim the next task by the scheduling rule (module docstring); None if nothing is runnable."""
        with self.transaction():
            row = self._claim(worker, lease, job, device, models)
        return _task(row) if row else None  # parse outside the lock: other writers proceed meanwhile

    def complete_and_claim(self, task: dict, worker: str, *, cached: bool, seconds: float, lease: float = 60.0,
                           job: int | None = None, device: str | None = None, models: set | frozenset = frozenset()):
        """`complete` then `claim`, in one transaction: a busy worker takes the write lock
        once per task instead of twice. Returns (completed, next task or None)."""
        with self.transaction():
            done = self._complete(task, worker, cached, seconds)
            row = self._claim(worker, lease, job, device, models)
        return done, _task(row) if row else None

    def _claim(self, worker, lease, job, device, models):
        now = time.time()
        if now >= self._next_expiry:
            self._expire(now)
            self._orphans(now)
            self._next_expiry = now + EXPIRY_EVERY
        busy = {m for (m,) in self.conn.execute(BUSY, (worker,))}
        params = {"now": now, "job": job, "worker": worker, "block_after": BLOCK_AFTER, "window": AFFINITY_WINDOW}
        pick, passed = choose(self._candidates(params, set(models), busy), set(models), busy)
        if pick is None:
            return None
        if passed is not None:
            self.conn.execute("UPDATE tasks SET skipped = skipped + 1 WHERE id = ?", (passed,))
        row = self.conn.execute(
            "UPDATE tasks SET state = 'running', lease_owner = :worker, lease_expires = :now + :lease, "
            "attempts = attempts + 1, started_at = :now, worker = :worker, device = :device WHERE id = :id "
            "RETURNING *", {"worker": worker, "now": now, "lease": lease, "device": device, "id": pick["id"]}
        ).fetchone()
        if pick["job_state"] == "queued":
            self.conn.execute("UPDATE jobs SET state = 'running', started_at = coalesce(started_at, ?) "
                              "WHERE id = ? AND state = 'queued'", (now, row["job_id"]))
        self._event(row["job_id"], row["id"], "task.started", worker, {"attempt": row["attempts"], "device": device})
        return row

    def _candidates(self, params: dict, models: set, busy: set):
        """What `choose` reads of the window, each read only when choose asks for it: the
        head; the first task warm here or free (the head itself when no other worker runs
        its model: no query); if that one is not warm, the first warm one.
        Choosing from those is choosing from the whole window (choose's docstring;
        tests/test_queue.py checks it on random queues). So a claim that takes the head
        evaluates one row, one that takes another scans the window at most twice. Why not
        hand choose the window itself: a row crossing into Python cost ~1 us, against
        ~0.35 us for SQLite to evaluate it, so a 128-row window was 170 of a claim's 315 us
        (bench_queue.py, 2026-12-01)."""
        head = self.conn.execute(HEAD, params).fetchone()
        if head is None:
            return
        yield head
        held, others = sorted(models), sorted(busy)
        params = {**params, **{f"h{i}": m for i, m in enumerate(held)}, **{f"b{i}": m for i, m in enumerate(others)}}
        if head["model"] is None or head["model"] not in busy:  # the head is the first free task: no query
            first = head
        else:
            first = self.conn.execute(probe(len(held), len(others), True), params).fetchone()
            if first is None:
                return
            yield first
        if models and not (first["model"] is None or first["model"] in models):
            warm = self.conn.execute(probe(len(held), len(others), False), params).fetchone()
            if warm is not None:
                yield warm

    def _expire(self, now: float):
        """Requeue running tasks whose lease ran out (their worker hung, or died on another
        host) and, at once, those of a farm worker known dead (`gone`: its process, or its Ray
        driver's, is no longer on this host): a killed worker's task is not kept a lease long."""
        dead = [w["name"] for w in self.conn.execute(
            f"SELECT {WHO} FROM workers w WHERE role = 'farm' AND EXISTS "
            "(SELECT 1 FROM tasks t WHERE t.lease_owner = w.name AND t.state = 'running')") if gone(w)]
        if dead:
            self.conn.execute(f"UPDATE tasks SET lease_expires = 0 WHERE state = 'running' AND lease_owner IN "
                              f"({', '.join('?' * len(dead))})", dead)
        expired = self.conn.execute(
            "UPDATE tasks SET state = CASE WHEN attempts >= max_attempts THEN 'failed' ELSE 'queued' END, "
            "error = 'lease expired: its worker stopped reporting (killed or hung)', lease_owner = NULL, "
            "lease_expires = NULL WHERE state = 'running' AND lease_expires < ? "
            "RETURNING id, job_id, name, state, worker", (now,)).fetchall()
        for t in expired:
            self._event(t["job_id"], t["id"], "task.lease_expired", t["worker"], {"state": t["state"]})
            if t["state"] == "failed":
                self._fail_job(t["job_id"], f"{t['name']}: failed {t['name']} after its worker died repeatedly", now)

    def sweep(self):
        """Put back tasks whose lease ran out and cancel the jobs of renders that are gone, now
        (claims do it at most once a second; `farm status` does it before it reports)."""
        now = time.time()
        with self.transaction():
            self._expire(now)
            self._orphans(now)

    def _orphans(self, now: float):
        """Cancel the jobs of `farm render`s that are gone, and forget their workers.

        A render is gone when its heartbeat is older than its lease, or at once when it ran on
        this host and its process no longer exists (SIGKILL, a closed terminal, the OOM killer).
        Its job is canceled rather than left to `farm work`: finishing it would publish the
        video of a spec the user may have edited and rendered again since. Its finished tasks
        stay in the cache, so rendering the spec again resumes from them."""
        lost = [(w["name"], w["pid"]) for w in self.conn.execute(
                    f"SELECT {WHO}, heartbeat_at, lease FROM workers WHERE role = 'render'")
                if w["heartbeat_at"] + w["lease"] < now or gone(w)]
        for name, pid in lost:
            self.conn.execute("DELETE FROM workers WHERE name = ?", (name,))
            self._event(None, None, "worker.lost", name, {"pid": pid})
        orphans = self.conn.execute(
            "SELECT id, owner FROM jobs j WHERE owner IS NOT NULL AND state IN ('queued', 'running') "
            "AND NOT EXISTS (SELECT 1 FROM workers w WHERE w.name = j.owner)").fetchall()
        for job, owner in orphans:
            self._cancel(job, f"its `farm render` ({owner}) stopped before the job finished (killed, its terminal "
                              f"closed, or out of memory); render the spec again to resume from the cache", now)

    def complete(self, task: dict, worker: str, *, cached: bool, seconds: float) -> bool:
        """Mark a task done if this worker still holds its lease *for this attempt*; the job is
        done with its last task. The attempt number (`task["attempts"]` as claimed) is a
        fencing token: an attempt whose lease expired and was claimed again, even by the
        same worker name, can never complete the newer attempt. False: not accepted."""
        with self.transaction():
            return self._complete(task, worker, cached, seconds)

    def _complete(self, task, worker, cached, seconds) -> bool:
        now = time.time()
        n = self.conn.execute(
            "UPDATE tasks SET state = 'done', cached = ?, finished_at = ?, lease_owner = NULL, "
            "lease_expires = NULL, error = NULL WHERE id = ? AND state = 'running' AND lease_owner = ? "
            "AND attempts = ?", (int(cached), now, task["id"], worker, task["attempts"])).rowcount
        if n:
            self._event(task["job_id"], task["id"], "task.cached" if cached else "task.done", worker,
                        {"seconds": round(seconds, 4)})
            left = self.conn.execute("UPDATE jobs SET tasks_left = tasks_left - 1 WHERE id = ? "
                                     "RETURNING tasks_left", (task["job_id"],)).fetchone()[0]
            if left == 0:
                self.conn.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ? "
                                  "AND state = 'running'", (now, task["job_id"]))
                self._event(task["job_id"], None, "job.done", worker, None)
        return bool(n)

    def fail(self, task: dict, worker: str, error: str, *, retry: bool = True):
        """Record a failure: requeue with backoff while attempts remain, else fail the job.

        Each failure also counts against this worker for this kind of task in this job; at
        BLOCK_AFTER it stops being offered them. If that leaves no live worker able to take
        the task, it fails now rather than wait forever."""
        now = time.time()
        with self.transaction():
            row = self.conn.execute("SELECT attempts, max_attempts FROM tasks WHERE id = ? AND lease_owner = ? "
                                    "AND state = 'running' AND attempts = ?",
                                    (task["id"], worker, task["attempts"])).fetchone()
            if row is None:
                return
            self.conn.execute("INSERT INTO blocklist (job_id, worker, kind, failures) VALUES (?, ?, ?, 1) "
                              "ON CONFLICT DO UPDATE SET failures = failures + 1",
                              (task["job_id"], worker, task["kind"]))
            if retry and row["attempts"] < row["max_attempts"] and self._someone_can_take(task, worker, now):
                backoff = min(2.0 ** (row["attempts"] - 1), BACKOFF_CAP)
                self.conn.execute("UPDATE tasks SET state = 'queued', not_before = ?, error = ?, lease_owner = NULL,"
                                  " lease_expires = NULL WHERE id = ?", (now + backoff, error, task["id"]))
                self._event(task["job_id"], task["id"], "task.retry", worker, {"error": error, "backoff": backoff})
            else:
                self.conn.execute("UPDATE tasks SET state = 'failed', error = ?, finished_at = ?, lease_owner = NULL,"
                                  " lease_expires = NULL WHERE id = ?", (error, now, task["id"]))
                self._event(task["job_id"], task["id"], "task.failed", worker, {"error": error})
                self._fail_job(task["job_id"], f"{task['name']}: {error}", now)

    def _someone_can_take(self, task: dict, worker: str, now: float) -> bool:
        """Is there a live worker (this one included) not blocklisted for this task's kind and job?
        Live: its heartbeat within its lease, and not known dead (`gone`)."""
        blocked = {w for (w,) in self.conn.execute(
            "SELECT worker FROM blocklist WHERE job_id = ? AND kind = ? AND failures >= ?",
            (task["job_id"], task["kind"], BLOCK_AFTER))}
        live = {w["name"] for w in self.conn.execute(
            f"SELECT {WHO} FROM workers WHERE heartbeat_at + lease >= ? AND state != 'stopping' AND role = 'farm'",
            (now,)) if not gone(w)}
        return bool((live | {worker}) - blocked)

    def _fail_job(self, job: int, error: str, now: float):
        n = self.conn.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ? "
                              "AND state IN ('queued', 'running')", (error, now, job)).rowcount
        if n:
            self.conn.execute("UPDATE tasks SET state = 'canceled' WHERE job_id = ? AND state = 'queued'", (job,))
            self._event(job, None, "job.failed", None, {"error": error})

    def lost(self, worker: str):
        """A worker known to be dead that `gone` cannot see (a Ray actor on another node, by its
        driver): its running tasks go back to the queue now, as if their leases had run out."""
        with self.transaction():
            self.conn.execute("UPDATE tasks SET lease_expires = 0 WHERE state = 'running' AND lease_owner = ?",
                              (worker,))
            self._expire(time.time())

    def release(self, task: dict, worker: str):
        """Give a claimed task back untouched (the worker was stopped): not a failure."""
        with self.transaction():
            n = self.conn.execute("UPDATE tasks SET state = 'queued', attempts = max(attempts - 1, 0), "
                                  "lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ? "
                                  "AND state = 'running' AND attempts = ?",
                                  (task["id"], worker, task["attempts"])).rowcount
            if n:
                self._event(task["job_id"], task["id"], "task.released", worker, None)

    # --- workers ----------------------------------------------------------------------

    def register(self, worker: str, *, device: str, lease: float, role: str = "farm", pid: int | None = None,
                 host: str | None = None, node: str | None = None):
        """A worker starts: this process, or (for a Ray driver's actors) the given pid, host and
        node, with this process recorded as the driver that heartbeats for it."""
        now = time.time()
        driver = (os.getpid(), socket.gethostname()) if pid else (None, None)
        pid, host = pid or os.getpid(), host or socket.gethostname()
        with self.transaction():
            self.conn.execute(
                "INSERT OR REPLACE INTO workers (name, pid, host, node, device, lease, started_at, heartbeat_at, role, "
                "driver_pid, driver_host, pidns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (worker, pid, host, node, device, lease, now, now, role, *driver, PIDNS))
            self._event(None, None, "worker.started", worker,
                        {"device": device, "pid": pid, **({"node": node} if node else {})})

    def heartbeat(self, worker: str, *, models: list[str], state: str | None = None,
                  task: dict | None = None, lease: float | None = None) -> bool:
        """Say this worker is alive (and renew its task's lease); False if the lease was lost."""
        now = time.time()
        held = True
        with self.transaction():
            self.conn.execute("UPDATE workers SET heartbeat_at = ?, models = ?, state = coalesce(?, state) "
                              "WHERE name = ?", (now, json.dumps(models), state, worker))
            if task is not None:  # a busy worker claims nothing for a while: it looks for gone renders here
                self._orphans(now)  # (so a task of a render that died is abandoned within a heartbeat)
            if task is not None and lease is not None:
                held = bool(self.conn.execute(
                    "UPDATE tasks SET lease_expires = ? WHERE id = ? AND lease_owner = ? AND state = 'running' "
                    "AND attempts = ?", (now + lease, task["id"], worker, task["attempts"])).rowcount)
        return held

    def unregister(self, worker: str):
        with self.transaction():
            self.conn.execute("DELETE FROM workers WHERE name = ?", (worker,))
            self._event(None, None, "worker.stopped", worker, None)

    def workers(self, live_only: bool = True) -> list[dict]:
        """Workers (live ones: heartbeat within a lease), each with its task in flight (or
        None) and how many tasks it has finished, derived from the tasks table."""
        rows = self.db.query(
            "SELECT w.*, (SELECT count(*) FROM tasks d WHERE d.worker = w.name AND d.state = 'done') AS done "
            "FROM workers w" + (" WHERE w.heartbeat_at + w.lease >= ?" if live_only else "")
            + " ORDER BY w.started_at", [time.time()] if live_only else [])
        out = []
        for r in rows:
            t = self.conn.execute("SELECT id, job_id, name FROM tasks WHERE lease_owner = ? AND state = 'running'",
                                  (r["name"],)).fetchone()
            out.append({**r, "models": json.loads(r["models"]),
                        "task": {"id": t["id"], "job": t["job_id"], "name": t["name"]} if t else None})
        return out

    # --- reading ----------------------------------------------------------------------

    def record(self, job: int | None, task: int | None, event: str, worker: str | None, data: dict | None = None):
        """Add an event row of the caller's own (in its own transaction)."""
        with self.transaction():
            self._event(job, task, event, worker, data)

    def _event(self, job, task, event, worker, data):
        self.conn.execute("INSERT INTO events (ts, job_id, task_id, event, worker, data) VALUES (?, ?, ?, ?, ?, ?)",
                          (time.time(), job, task, event, worker, json.dumps(data) if data is not None else None))

    def job(self, job: int) -> dict | None:
        return next(self.db.query("SELECT * FROM jobs WHERE id = ?", [job]), None)

    def jobs(self) -> list[dict]:
        return list(self.db.query("SELECT * FROM jobs ORDER BY id"))

    def job_page(self, state: str | None = None, limit: int = 50, offset: int = 0) -> list[dict]:
        """A page of jobs, newest first, of one state or all (`farm serve`'s list)."""
        where, args = ("WHERE state = ? ", [state]) if state else ("", [])
        return list(self.db.query(f"SELECT * FROM jobs {where}ORDER BY id DESC LIMIT ? OFFSET ?",
                                  [*args, limit, offset]))

    def job_states(self) -> dict[str, int]:
        """How many jobs are in each state."""
        return {state: n for state, n in self.conn.execute("SELECT state, count(*) FROM jobs GROUP BY state")}

    def changes(self) -> tuple[int, int]:
        """What tells a reader the database changed since it last asked: SQLite's data version
        (it moves when another connection commits) and the newest event's id."""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        last = self.conn.execute("SELECT max(id) FROM events").fetchone()[0]
        return version, last or 0

    def tasks(self, job: int) -> list[dict]:
        return [_task(r) for r in self.db.query("SELECT * FROM tasks WHERE job_id = ? ORDER BY id", [job])]

    def task(self, task: int) -> dict | None:
        row = next(self.db.query("SELECT * FROM tasks WHERE id = ?", [task]), None)
        return _task(row) if row else None

    def task_name(self, task: int) -> str | None:
        row = self.conn.execute("SELECT name FROM tasks WHERE id = ?", (task,)).fetchone()
        return row[0] if row else None

    def timings(self, job: int) -> dict:
        """Of a job's done tasks: how many came from the cache, how many ran, and the mean
        seconds of those that ran (None before any did): what an ETA is made of."""
        cached, executed, mean = self.conn.execute(
            "SELECT sum(cached), sum(cached = 0), avg(CASE WHEN cached = 0 THEN finished_at - started_at END) "
            "FROM tasks WHERE job_id = ? AND state = 'done'", (job,)).fetchone()
        return {"cached": cached or 0, "executed": executed or 0, "mean_seconds": mean}

    def first_runs(self, keys: list[str]) -> dict[str, dict]:
        """For each key, the task that made its output (done and not from the cache; the
        earliest to finish if several did): {key: {job_id, name, worker, device, started_at,
        finished_at}}. Keys no task made are left out."""
        found = {}
        for i in range(0, len(keys), 500):  # SQLite caps the number of bound parameters
            chunk = keys[i:i + 500]
            rows = self.db.query(
                f"SELECT key, job_id, name, worker, device, started_at, finished_at FROM tasks "
                f"WHERE key IN ({','.join('?' * len(chunk))}) AND state = 'done' AND cached = 0 "
                f"ORDER BY finished_at", chunk)
            for row in rows:
                found.setdefault(row.pop("key"), row)
        return found

    def run_times(self) -> list[tuple[str, str | None, str, float]]:
        """(kind, model, params as stored, seconds) of every finished task that ran (not answered
        from the cache): the history `farm plan` estimates times from. FarmError if the database
        cannot be read as farm's (another program's, or one too old to have these columns)."""
        try:
            return [tuple(r) for r in self.conn.execute(
                "SELECT kind, model, params, finished_at - started_at FROM tasks WHERE state = 'done' "
                "AND cached = 0 AND started_at IS NOT NULL AND finished_at > started_at")]
        except sqlite3.Error as e:
            raise FarmError(f"Cannot read the task history of {self.path}: {e}") from None

    def latest_done(self, spec_path: str) -> int | None:
        """The id of the last job of this spec (by its resolved path) that finished, or None."""
        row = self.conn.execute("SELECT id FROM jobs WHERE spec_path = ? AND state = 'done' ORDER BY id DESC "
                                "LIMIT 1", (spec_path,)).fetchone()
        return row[0] if row else None

    def counts(self, job: int) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, count(*) FROM tasks WHERE job_id = ? GROUP BY state", (job,))
        return {state: n for state, n in rows}

    def events(self, job: int | None = None, after: int = 0) -> list[dict]:
        if job is None:
            return list(self.db.query("SELECT * FROM events WHERE id > ? ORDER BY id", [after]))
        return list(self.db.query("SELECT * FROM events WHERE job_id = ? AND id > ? ORDER BY id", [job, after]))

    def needs(self, task_id: int) -> list[str]:
        """Keys of the tasks a task depends on: the cache entries it reads."""
        return [k for (k,) in self.conn.execute("SELECT u.key FROM deps d JOIN tasks u ON u.id = d.needs "
                                                "WHERE d.task_id = ? ORDER BY u.id", (task_id,))]

    def live_keys(self) -> set[str]:
        """Keys of every task of a queued or running job, or of a done one not yet published
        (publishing reads its assembly, and its contact sheet its keyframes): the cache entries
        `farm gc` keeps."""
        return {k for (k,) in self.conn.execute(
            "SELECT t.key FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE j.state IN ('queued', 'running') "
            "OR (j.state = 'done' AND j.published IS NULL)")}

    def newer_published(self, job: int) -> int | None:
        """The id of a job submitted after this one for the same output that was published, or
        None: this job may replace its output only while there is none."""
        row = self.conn.execute("SELECT n.id FROM jobs o JOIN jobs n ON n.output = o.output AND n.id > o.id "
                                "WHERE o.id = ? AND n.published = 'published' ORDER BY n.id DESC LIMIT 1",
                                (job,)).fetchone()
        return row[0] if row else None

    def published(self, job: int, outcome: str, worker: str | None, data: dict) -> None:
        """Record how a done job's publishing ended ('published', 'superseded' or 'failed'),
        with its event (job.published, job.superseded, job.publish_failed)."""
        event = {"published": "job.published", "superseded": "job.superseded", "failed": "job.publish_failed"}
        with self.transaction():
            self.conn.execute("UPDATE jobs SET published = ? WHERE id = ?", (outcome, job))
            task = self.conn.execute("SELECT id FROM tasks WHERE job_id = ? AND kind = 'assemble'", (job,)).fetchone()
            self._event(job, task[0] if task else None, event[outcome], worker, data)

    def next_wakeup(self, job: int) -> float | None:
        """When the earliest task of a job now backing off after a failure becomes claimable;
        None if no task of the job is waiting on a backoff."""
        return self.conn.execute("SELECT min(not_before) FROM tasks WHERE job_id = ? AND state = 'queued' "
                                 "AND not_before > ?", (job, time.time())).fetchone()[0]

    def pending(self) -> int:
        """Tasks queued or running in live jobs: what `farm work --until-empty` waits for."""
        return self.conn.execute("SELECT count(*) FROM tasks t JOIN jobs j ON j.id = t.job_id WHERE "
                                 "t.state IN ('queued', 'running') AND j.state IN ('queued', 'running') "
                                 "AND j.paused = 0").fetchone()[0]


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")  # "pid:[4026531836]"
    except OSError:
        return None


PIDNS = _pid_namespace()  # this process's; a worker row holds its registering process's
WHO = "name, pid, host, pidns, driver_pid, driver_host"  # a worker row's columns that `gone` reads


def gone(worker) -> bool:
    """Whether the process that heartbeats for a worker row (the worker's own, or a Ray actor's
    driver, which registered it) is known dead: it ran on this host, in this pid namespace, and
    its pid is no longer there. Any other worker (another host, another container of this one)
    is judged by its heartbeat alone. (A pid reused since reads as alive: the lease then
    decides, as for a worker elsewhere.)"""
    pid, host = (worker["driver_pid"], worker["driver_host"]) if worker["driver_pid"] else (
        worker["pid"], worker["host"])
    return (pid is not None and host == socket.gethostname() and worker["pidns"] == PIDNS
            and not alive(pid))


def alive(pid: int | None) -> bool:
    """Is there a process with this id on this host? (Signal 0 checks without sending.)"""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _task(row) -> dict:
    task = dict(row)
    task["params"] = json.loads(task["params"])
    return task


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so claims never deadlock.

    Waiting writers use SQLite's busy handler. (An flock queue in front of it was tried: it
    hands the lock to another process on every transaction, and each hand-over makes that
    connection reload its page cache. On an idle 2-core machine, 4 processes over 1 ran at
    0.76-0.93 with the flock, 0.77-1.10 without; bench_queue.py, 2026-11-23.)"""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
