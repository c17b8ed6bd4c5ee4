"""The durable queue: jobs, tasks, dependencies and events in one SQLite database.

WAL mode, short transactions, and schema versions in `PRAGMA user_version` with a list of
migrations applied in order. Every verb that changes state is one transaction. A task is
claimable when it is queued (or its lease expired), its job is live, its backoff has
passed, and every task it depends on is done; claims take the highest priority first, then
the oldest task.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import sqlite_utils

from .errors import FarmError

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
        priority INTEGER NOT NULL DEFAULT 50,
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
    CREATE INDEX tasks_claim ON tasks (state, priority DESC, id);
    CREATE INDEX tasks_job ON tasks (job_id, state);
    CREATE TABLE deps (
        task_id INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        needs INTEGER NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        PRIMARY KEY (task_id, needs)
    ) WITHOUT ROWID;
    CREATE INDEX deps_needs ON deps (needs);
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
]
SCHEMA_VERSION = len(MIGRATIONS)
BACKOFF_CAP = 60.0  # seconds; a retry waits 1, 2, 4 ... seconds up to this

# The scheduling rule, in one statement. Runnable: queued with its backoff passed, or
# running with an expired lease; job not paused, canceled or finished; no dependency
# unfinished. Order: task priority, then age.
CLAIM = """
UPDATE tasks SET state = 'running', lease_owner = :worker, lease_expires = :now + :lease,
       attempts = attempts + 1, started_at = :now, worker = :worker, device = :device
WHERE id = (
    SELECT t.id FROM tasks t JOIN jobs j ON j.id = t.job_id
    WHERE (t.state = 'queued' AND (t.not_before IS NULL OR t.not_before <= :now)
           OR t.state = 'running' AND t.lease_expires < :now)
      AND j.state IN ('queued', 'running')
      AND (:job IS NULL OR t.job_id = :job)
      AND NOT EXISTS (SELECT 1 FROM deps d JOIN tasks u ON u.id = d.needs
                      WHERE d.task_id = t.id AND u.state != 'done')
    ORDER BY t.priority DESC, t.id
    LIMIT 1)
RETURNING *
"""


class Queue:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except (OSError, sqlite3.Error) as e:
            raise FarmError(f"Cannot open the queue database {self.path}: {e}") from None
        self.db = sqlite_utils.Database(conn)
        self.conn = conn
        self._migrate()

    def _migrate(self):
        version = self.conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise FarmError(f"The queue database {self.path} has schema version {version}, newer than this "
                            f"farm understands ({SCHEMA_VERSION}). Upgrade farm, or use another FARM_HOME.")
        for i in range(version, SCHEMA_VERSION):
            with self.transaction():
                for statement in MIGRATIONS[i].split(";"):
                    if statement.strip():
                        self.conn.execute(statement)
                self.conn.execute(f"PRAGMA user_version = {i + 1}")

    def transaction(self):
        return _Transaction(self.conn)

    def close(self):
        self.conn.close()

    # --- writing ----------------------------------------------------------------------

    def submit(self, plan, *, priority: int = 50, max_attempts: int = 3) -> int:
        """Enqueue a plan as a new job with all its tasks and dependencies, atomically."""
        spec, now = plan.spec, time.time()
        # Plain INSERTs inside our own transaction: sqlite-utils' insert() commits on its own.
        with self.transaction():
            job = self.conn.execute(
                "INSERT INTO jobs (name, spec_path, spec_digest, output, state, priority, created_at) "
                "VALUES (?, ?, ?, ?, 'queued', ?, ?)",
                (spec.name, str(spec.path), spec.digest, str(spec.out), priority, now)).lastrowid
            ids = {}
            for t in plan.tasks:
                ids[t.name] = self.conn.execute(
                    "INSERT INTO tasks (job_id, name, kind, key, model, params, state, priority, max_attempts, "
                    "created_at) VALUES (?, ?, ?, ?, ?, ?, 'queued', ?, ?, ?)",
                    (job, t.name, t.kind, t.key, t.model, json.dumps(t.params), priority, max_attempts, now),
                ).lastrowid
            self.conn.executemany("INSERT INTO deps (task_id, needs) VALUES (?, ?)",
                                  [(ids[t.name], ids[d]) for t in plan.tasks for d in t.deps])
            self._event(job, None, "job.queued", None, {"tasks": len(plan.tasks)})
        return job

    def claim(self, worker: str, *, lease: float = 60.0, job: int | None = None, device: str | None = None):
        now = time.time()
        with self.transaction():
            row = self.conn.execute(CLAIM, {"worker": worker, "now": now, "lease": lease, "job": job,
                                            "device": device}).fetchone()
            if row is None:
                return None
            self.conn.execute("UPDATE jobs SET state = 'running', started_at = coalesce(started_at, ?) "
                              "WHERE id = ? AND state = 'queued'", (now, row["job_id"]))
            self._event(row["job_id"], row["id"], "task.started", worker, {"attempt": row["attempts"]})
        return _task(row)

    def complete(self, task: dict, worker: str, *, cached: bool, seconds: float):
        now = time.time()
        with self.transaction():
            n = self.conn.execute(
                "UPDATE tasks SET state = 'done', cached = ?, finished_at = ?, lease_owner = NULL, "
                "lease_expires = NULL, error = NULL WHERE id = ? AND state = 'running' AND lease_owner = ?",
                (int(cached), now, task["id"], worker)).rowcount
            if n:
                self._event(task["job_id"], task["id"], "task.cached" if cached else "task.done", worker,
                            {"seconds": round(seconds, 4)})
                left = self.conn.execute("SELECT count(*) FROM tasks WHERE job_id = ? AND state != 'done'",
                                         (task["job_id"],)).fetchone()[0]
                if left == 0:
                    self.conn.execute("UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ?",
                                      (now, task["job_id"]))
                    self._event(task["job_id"], None, "job.done", worker, None)
        return bool(n)

    def fail(self, task: dict, worker: str, error: str, *, retry: bool = True):
        """Record a failure: requeue with backoff while attempts remain, else fail the job."""
        now = time.time()
        with self.transaction():
            row = self.conn.execute("SELECT attempts, max_attempts FROM tasks WHERE id = ? AND lease_owner = ? "
                                    "AND state = 'running'", (task["id"], worker)).fetchone()
            if row is None:
                return
            if retry and row["attempts"] < row["max_attempts"]:
                backoff = min(2.0 ** (row["attempts"] - 1), BACKOFF_CAP)
                self.conn.execute("UPDATE tasks SET state = 'queued', not_before = ?, error = ?, lease_owner = NULL,"
                                  " lease_expires = NULL WHERE id = ?", (now + backoff, error, task["id"]))
                self._event(task["job_id"], task["id"], "task.retry", worker, {"error": error, "backoff": backoff})
            else:
                self.conn.execute("UPDATE tasks SET state = 'failed', error = ?, finished_at = ?, lease_owner = NULL,"
                                  " lease_expires = NULL WHERE id = ?", (error, now, task["id"]))
                self.conn.execute("UPDATE jobs SET state = 'failed', error = ?, finished_at = ? WHERE id = ?",
                                  (f"{task['name']}: {error}", now, task["job_id"]))
                self._event(task["job_id"], task["id"], "task.failed", worker, {"error": error})

    def release(self, task: dict, worker: str):
        """Give a claimed task back untouched (the worker was interrupted): not a failure."""
        with self.transaction():
            n = self.conn.execute("UPDATE tasks SET state = 'queued', attempts = max(attempts - 1, 0), "
                                  "lease_owner = NULL, lease_expires = NULL WHERE id = ? AND lease_owner = ? "
                                  "AND state = 'running'", (task["id"], worker)).rowcount
            if n:
                self._event(task["job_id"], task["id"], "task.released", worker, None)

    def cancel(self, job: int, reason: str | None = None):
        now = time.time()
        with self.transaction():
            self.conn.execute("UPDATE jobs SET state = 'canceled', error = coalesce(?, error), finished_at = ? "
                              "WHERE id = ? AND state IN ('queued', 'running')", (reason, now, job))
            self.conn.execute("UPDATE tasks SET state = 'canceled', lease_owner = NULL, lease_expires = NULL "
                              "WHERE job_id = ? AND state IN ('queued', 'running')", (job,))
            self._event(job, None, "job.canceled", None, {"reason": reason} if reason else None)

    def _event(self, job, task, event, worker, data):
        self.conn.execute("INSERT INTO events (ts, job_id, task_id, event, worker, data) VALUES (?, ?, ?, ?, ?, ?)",
                          (time.time(), job, task, event, worker, json.dumps(data) if data is not None else None))

    # --- reading ----------------------------------------------------------------------

    def job(self, job: int) -> dict | None:
        return next(self.db.query("SELECT * FROM jobs WHERE id = ?", [job]), None)

    def tasks(self, job: int) -> list[dict]:
        return [_task(r) for r in self.db.query("SELECT * FROM tasks WHERE job_id = ? ORDER BY id", [job])]

    def counts(self, job: int) -> dict[str, int]:
        rows = self.conn.execute("SELECT state, count(*) FROM tasks WHERE job_id = ? GROUP BY state", (job,))
        return {state: n for state, n in rows}

    def events(self, job: int) -> list[dict]:
        return list(self.db.query("SELECT * FROM events WHERE job_id = ? ORDER BY id", [job]))

    def next_wakeup(self, job: int) -> float | None:
        """When the earliest backed-off task of a job becomes claimable, if any."""
        return self.conn.execute("SELECT min(not_before) FROM tasks WHERE job_id = ? AND state = 'queued'",
                                 (job,)).fetchone()[0]


def _task(row) -> dict:
    task = dict(row)
    task["params"] = json.loads(task["params"])
    return task


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT: takes the write lock up front so claims never deadlock."""

    def __init__(self, conn):
        self.conn = conn

    def __enter__(self):
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type, exc, tb):
        self.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        return False
