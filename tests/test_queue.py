"""The SQLite queue: schema versions, the claim rule, dependencies, failure and leases.

A contract: every test taking `q` runs against an in-memory and a file database (as huey's
StorageTests run one suite over each storage), so what they check is the queue's, not one
database file's."""

import sqlite3
import time
from pathlib import Path

import pytest

from farm.errors import FarmError
from farm.plan.plan import Plan, Task
from farm.queue import queue as queue_mod
from farm.queue.queue import Queue


class FakeSpec:
    name = "q"
    path = Path("/tmp/q.toml")
    digest = "d"
    out = Path("/tmp/q.mp4")


def make_plan(n_keyframes=2):
    tasks = [Task(f"keyframe[{i}]", "keyframe", f"k{i}", {}, (), "m") for i in range(n_keyframes)]
    tasks.append(Task("assemble", "assemble", "a", {}, tuple(t.name for t in tasks)))
    return Plan(FakeSpec(), tasks)


@pytest.fixture(params=["memory", "file"])
def q(request, tmp_path):
    queue = Queue(":memory:" if request.param == "memory" else tmp_path / "q.db")
    yield queue
    queue.close()


@pytest.fixture
def file_q(tmp_path):
    queue = Queue(tmp_path / "q.db")
    yield queue
    queue.close()


def test_schema_is_versioned_and_wal(file_q, tmp_path):
    conn = sqlite3.connect(tmp_path / "q.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == queue_mod.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = {r[1] for r in conn.execute("PRAGMA table_info(tasks)")}
    assert {"state", "attempts", "lease_owner", "lease_expires", "priority", "error", "created_at"} <= cols
    Queue(tmp_path / "q.db").close()  # reopening migrates nothing and keeps the version
    assert conn.execute("PRAGMA user_version").fetchone()[0] == queue_mod.SCHEMA_VERSION


def test_a_newer_schema_is_refused(tmp_path):
    conn = sqlite3.connect(tmp_path / "new.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(FarmError, match="schema version 99"):
        Queue(tmp_path / "new.db")


def test_submit_is_one_transaction(q, monkeypatch):
    bad = make_plan()
    bad.tasks.append(Task("broken", "assemble", "x", {}, ("no-such-task",)))
    with pytest.raises(KeyError):
        q.submit(bad)
    assert q.conn.execute("SELECT count(*) FROM jobs").fetchone()[0] == 0
    assert q.conn.execute("SELECT count(*) FROM tasks").fetchone()[0] == 0


def test_dependencies_gate_claims(q):
    job = q.submit(make_plan())
    a = q.claim("w")
    b = q.claim("w")
    assert {a["name"], b["name"]} == {"keyframe[0]", "keyframe[1]"}
    assert q.claim("w") is None  # assemble waits for both keyframes
    q.complete(a, "w", cached=False, seconds=0)
    assert q.claim("w") is None
    q.complete(b, "w", cached=True, seconds=0)
    c = q.claim("w")
    assert c["name"] == "assemble"
    q.complete(c, "w", cached=False, seconds=0)
    assert q.job(job)["state"] == "done"
    assert q.counts(job) == {"done": 3}
    events = [e["event"] for e in q.events(job)]
    assert events[0] == "job.queued" and events[-1] == "job.done" and events.count("task.started") == 3


def test_priority_then_age(q):
    low = q.submit(make_plan(1), priority=10)
    high = q.submit(make_plan(1), priority=90)
    old_mid = q.submit(make_plan(1), priority=50)
    q.submit(make_plan(1), priority=50)
    order = [q.claim("w")["job_id"] for _ in range(4)]
    assert order[:2] == [high, old_mid] and order[-1] == low


def test_the_claim_reads_what_the_whole_window_would_decide(q, monkeypatch):
    """A claim hands `choose` the head, the first task warm or free and maybe the first warm
    one, not the whole window (bench_queue.py: the rows crossing into Python were half a
    claim's time). On random queues (priorities, models, dependencies, tasks other workers
    run, tasks passed over up to MAX_SKIPS, a window shorter than the queue) its pick is the
    one `choose` makes reading every runnable task of the window in queue order."""
    import random

    monkeypatch.setattr(queue_mod, "AFFINITY_WINDOW", 12)
    rng = random.Random(18)
    models = ["a", "b", "c", "d", None]
    for round_ in range(40):
        for _ in range(rng.randint(1, 3)):
            tasks = [Task(f"t{i}", "keyframe", f"k{round_}-{i}", {}, (), rng.choice(models))
                     for i in range(rng.randint(1, 12))]
            tasks += [Task(f"s{i}", "segment", f"s{round_}-{i}", {}, (f"t{i}",), rng.choice(models))
                      for i in range(rng.randint(0, len(tasks)))]
            q.submit(Plan(FakeSpec(), tasks), priority=rng.choice([10, 50, 50, 90]))
        for _ in range(rng.randint(0, 4)):  # other workers run some tasks now
            q.claim(f"other{rng.randint(0, 3)}", models=set(rng.sample(models[:4], rng.randint(0, 2))))
        q.conn.execute("UPDATE tasks SET skipped = abs(random()) % (? + 2) WHERE state = 'queued'",
                       (queue_mod.MAX_SKIPS,))
        for held in [set(), {"a"}, {"b", "c"}, {"d"}, {"a", "b", "c", "d"}]:
            busy = {m for (m,) in q.conn.execute(queue_mod.BUSY, ("w",))}
            params = {"now": time.time(), "job": None, "worker": "w", "block_after": queue_mod.BLOCK_AFTER,
                      "window": queue_mod.AFFINITY_WINDOW}
            window = q.conn.execute(queue_mod.WINDOW, params).fetchall()
            pick, passed = queue_mod.choose(window, held, busy)
            got, got_passed = queue_mod.choose(q._candidates(params, held, busy), held, busy)
            assert (got and got["id"], got_passed) == (pick and pick["id"], passed), (round_, held, busy)
        for t in q.conn.execute("SELECT * FROM tasks WHERE state = 'running'").fetchall():  # some finish
            if rng.random() < 0.5:
                q.complete(dict(t), t["lease_owner"], cached=False, seconds=0)


def test_a_long_storyboard_drains_in_order_with_no_empty_claim(q):
    """A storyboard of 200 keyframes joined by 200 segments (each needing keyframes k and k+1)
    and an assembly, drained as a worker does (complete_and_claim, holding the keyframes'
    model): every claim finds the next task until the job is done, in plan order, also past
    the affinity window (more than AFFINITY_WINDOW queued tasks behind the head, then more
    than AFFINITY_WINDOW segments waiting on keyframes). A render of such a storyboard was
    seen slowing from 0.2 s to 40 s a keyframe past the 140th; its queue alone does not."""
    n = 200
    keyframes = [Task(f"keyframe[{i}]", "keyframe", f"k{i}", {}, (), "m") for i in range(n)]
    segments = [Task(f"segment[{i}]", "segment", f"s{i}", {},
                     (f"keyframe[{i}]",) + ((f"keyframe[{i + 1}]",) if i + 1 < n else ()), None) for i in range(n)]
    tasks = keyframes + segments + [Task("assemble", "assemble", "a", {}, tuple(s.name for s in segments))]
    job = q.submit(Plan(FakeSpec(), tasks))
    order, task = [], q.claim("w", job=job)
    while task is not None:
        order.append(task["name"])
        _, task = q.complete_and_claim(task, "w", cached=False, seconds=0, job=job, models={"m"})
    assert order == [t.name for t in tasks]
    assert q.job(job)["state"] == "done" and q.next_wakeup(job) is None


def test_a_runnable_task_behind_more_blocked_tasks_than_the_window_is_claimed(q):
    """The window counts runnable tasks only: a task queued behind more than AFFINITY_WINDOW
    tasks that wait on a running one is still claimed, by a worker holding nothing, its
    model, or others (the probes' paths), instead of the claim coming back empty."""
    gate = Task("gate", "keyframe", "g", {}, (), "m")
    waiting = [Task(f"wait[{i}]", "segment", f"w{i}", {}, ("gate",), None)
               for i in range(queue_mod.AFFINITY_WINDOW + 22)]
    job = q.submit(Plan(FakeSpec(), [gate, *waiting, Task("free", "keyframe", "f", {}, (), "m")]))
    assert q.claim("w", job=job)["name"] == "gate"  # runs now: its model is busy for the others
    for held in (set(), {"m"}, {"x"}, {"x", "y"}):
        t = q.claim("w2", job=job, models=held)
        assert t is not None and t["name"] == "free", held
        q.release(t, "w2")
    assert q.next_wakeup(job) is None


def test_only_the_lease_holder_completes(q):
    q.submit(make_plan(1))
    t = q.claim("w1")
    assert not q.complete(t, "w2", cached=False, seconds=0)
    assert q.complete(t, "w1", cached=False, seconds=0)


def test_expired_lease_returns_the_task(q, monkeypatch):
    monkeypatch.setattr(queue_mod, "EXPIRY_EVERY", 0)  # sweep at every claim (normally once a second)
    q.submit(make_plan(1))
    t = q.claim("dead", lease=0.01)
    time.sleep(0.05)
    again = q.claim("alive")
    assert again["id"] == t["id"] and again["attempts"] == 2 and again["lease_owner"] == "alive"
    assert not q.complete(t, "dead", cached=False, seconds=0)  # the dead worker's late report is ignored


def test_a_dead_workers_task_returns_at_once_not_a_lease_later(q, monkeypatch):
    """A worker known dead (its pid gone from this host, or reported by a Ray driver) holds its
    task no longer: the next sweep gives it back, with an hour of its lease left. A live worker,
    a worker on another host and one in another container of this host (another pid namespace,
    the same host name) are judged by their leases alone, and keep theirs."""
    import subprocess
    import sys

    monkeypatch.setattr(queue_mod, "EXPIRY_EVERY", 0)
    q.submit(make_plan(5))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid: a process that was, and is no longer
    for name in ("killed", "alive", "elsewhere", "container"):  # local `farm work` workers: own pid and host
        q.register(name, device="cpu", lease=3600)
    q.conn.execute("UPDATE workers SET pid = ? WHERE name = 'killed'", (dead.pid,))
    q.conn.execute("UPDATE workers SET pid = ?, host = 'another-machine' WHERE name = 'elsewhere'", (dead.pid,))
    q.conn.execute("UPDATE workers SET pid = ?, pidns = 'pid:[1]' WHERE name = 'container'", (dead.pid,))
    q.register("actor", device="cpu", lease=3600, pid=dead.pid, host="another-machine")  # its driver: this process
    held = {name: q.claim(name, lease=3600) for name in ("alive", "elsewhere", "container", "actor", "killed")}
    q.sweep()
    running = {name for (name,) in q.conn.execute("SELECT lease_owner FROM tasks WHERE state = 'running'")}
    assert running == {"alive", "elsewhere", "container", "actor"}
    q.lost("actor")  # the Ray driver was told its actor died
    running = {name for (name,) in q.conn.execute("SELECT lease_owner FROM tasks WHERE state = 'running'")}
    assert running == {"alive", "elsewhere", "container"}
    for name in ("killed", "actor"):
        events = [e for (e,) in q.conn.execute("SELECT event FROM events WHERE task_id = ? ORDER BY id",
                                                (held[name]["id"],))]
        assert events == ["task.started", "task.lease_expired"]
    again = {q.claim("alive")["id"]: 2, q.claim("alive")["id"]: 2}
    assert again == {held["killed"]["id"]: 2, held["actor"]["id"]: 2}
    attempts = dict(q.conn.execute("SELECT id, attempts FROM tasks WHERE id IN (?, ?)",
                                   (held["killed"]["id"], held["actor"]["id"])).fetchall())
    assert attempts == again  # the dead attempt counted, as for an expired lease
    for name in ("killed", "actor"):
        assert not q.complete(held[name], name, cached=False, seconds=0)  # a late report is ignored


def test_retry_with_backoff_then_fail(q, monkeypatch):
    job = q.submit(make_plan(1), max_attempts=2)
    t = q.claim("w")
    q.fail(t, "w", "boom")
    row = q.conn.execute("SELECT state, not_before, error FROM tasks WHERE id = ?", (t["id"],)).fetchone()
    assert row["state"] == "queued" and row["not_before"] > time.time() and row["error"] == "boom"
    assert q.claim("w") is None  # backing off
    q.conn.execute("UPDATE tasks SET not_before = 0")
    t = q.claim("w")
    q.fail(t, "w", "boom again")
    assert q.job(job)["state"] == "failed" and "boom again" in q.job(job)["error"]
    assert q.claim("w") is None


def test_release_is_not_an_attempt(q):
    q.submit(make_plan(1))
    t = q.claim("w")
    q.release(t, "w")
    again = q.claim("w")
    assert again["id"] == t["id"] and again["attempts"] == 1


def test_cancel_stops_claims(q):
    job = q.submit(make_plan(1))
    q.cancel(job, "no longer needed")
    assert q.claim("w") is None
    assert q.job(job)["state"] == "canceled" and q.counts(job) == {"canceled": 2}


def test_claims_can_be_scoped_to_a_job(q):
    a = q.submit(make_plan(1))
    b = q.submit(make_plan(1))
    assert q.claim("w", job=b)["job_id"] == b
    assert q.claim("w", job=b) is None
    assert q.claim("w", job=a)["job_id"] == a


def test_read_methods_for_status_manifest_and_review(q):
    first = q.submit(make_plan(2))
    done = []
    while (t := q.claim("w")) is not None:
        q.complete(t, "w", cached=t["name"] == "keyframe[1]", seconds=0)
        done.append(t)
    again = q.submit(make_plan(2))  # the same keys, answered from the cache
    while (t := q.claim("w2")) is not None:
        q.complete(t, "w2", cached=True, seconds=0)
    assert q.task_name(done[0]["id"]) == done[0]["name"] and q.task_name(10 ** 6) is None
    timings = q.timings(first)
    assert timings["cached"] == 1 and timings["executed"] == 2 and timings["mean_seconds"] >= 0
    assert q.timings(again) == {"cached": 3, "executed": 0, "mean_seconds": None}
    made = q.first_runs(["k0", "k1", "a", "nowhere"])
    assert set(made) == {"k0", "a"}  # k1 came from the cache: no task of these made it
    assert made["k0"]["job_id"] == first and made["k0"]["worker"] == "w" and made["k0"]["name"] == "keyframe[0]"
    assert q.latest_done(str(FakeSpec.path)) == again and q.latest_done("/elsewhere.toml") is None


def test_farm_plan_reads_run_times_from_a_read_only_queue(file_q, tmp_path):
    """`farm plan` estimates from the run times of finished tasks, read through Queue.read_only:
    nothing is created or written, and a database that is not farm's is a FarmError (no history)."""
    with pytest.raises(FarmError, match="Cannot open"):
        Queue.read_only(tmp_path / "none.db")
    assert not (tmp_path / "none.db").exists()
    job = file_q.submit(make_plan(2))
    while (t := file_q.claim("w")) is not None:
        time.sleep(0.01)  # a run time above zero
        file_q.complete(t, "w", cached=t["name"] == "keyframe[1]", seconds=0)
    reader = Queue.read_only(tmp_path / "q.db")
    try:
        runs = reader.run_times()
        assert reader.job(job)["state"] == "done"
    finally:
        reader.close()
    assert sorted(kind for kind, *_ in runs) == ["assemble", "keyframe"]  # not keyframe[1], from the cache
    assert all(seconds > 0 for *_, seconds in runs)
    foreign = sqlite3.connect(tmp_path / "foreign.db")
    foreign.execute("CREATE TABLE notes (text TEXT)")
    foreign.commit()
    foreign.close()
    reader = Queue.read_only(tmp_path / "foreign.db")
    with pytest.raises(FarmError, match="task history"):
        reader.run_times()
    reader.close()


def test_a_task_no_live_worker_may_take_fails_at_once(q, monkeypatch):
    """`Queue.fail`: once every live worker is blocklisted for a task's kind in its job, the task
    fails now, attempts left or not, instead of waiting for a worker that will never take it.
    Workers that are not live do not count: one whose heartbeat is older than its lease, one
    stopping, and a `farm render`'s (it draws its own job only)."""
    monkeypatch.setattr(queue_mod, "BACKOFF_CAP", 0)  # a retry is claimable at once
    job = q.submit(make_plan(1), max_attempts=10)
    for name in ("a", "b", "gone", "stopping"):
        q.register(name, device="cpu", lease=60)
    q.register("render:1", device="cpu", lease=60, role="render")
    q.conn.execute("UPDATE workers SET heartbeat_at = 0 WHERE name = 'gone'")
    q.heartbeat("stopping", models=[], state="stopping")

    def fail(worker):
        t = q.claim(worker)
        assert t is not None and t["name"] == "keyframe[0]", (worker, t)
        q.fail(t, worker, f"driver error on {worker}")
        return q.conn.execute("SELECT state, attempts FROM tasks WHERE id = ?", (t["id"],)).fetchone()

    for _ in range(queue_mod.BLOCK_AFTER):
        assert fail("a")["state"] == "queued"  # b may still take it
    assert q.claim("a") is None  # blocklisted for keyframes of this job
    for _ in range(queue_mod.BLOCK_AFTER - 1):
        assert fail("b")["state"] == "queued"
    row = fail("b")  # the last live worker's last allowed failure: nobody is left
    assert row["state"] == "failed" and row["attempts"] == 2 * queue_mod.BLOCK_AFTER < 10
    assert q.job(job)["state"] == "failed" and q.job(job)["error"] == "keyframe[0]: driver error on b"
    assert q.counts(job) == {"failed": 1, "canceled": 1}  # the assembly will never run
    events = [e["event"] for e in q.events(job)]
    assert events.count("task.retry") == 2 * queue_mod.BLOCK_AFTER - 1
    assert events[-2:] == ["task.failed", "job.failed"]
    assert q.claim("gone") is None and q.pending() == 0  # nothing left waiting


def old_database(path, version):
    """A queue database as a farm of schema `version` left it (its first `version` migrations,
    applied as `Queue` applies them), with rows in every table: a done job, and a running job
    with a done keyframe, a queued assembly that needs it, a worker, a blocklist entry, events."""
    conn = sqlite3.connect(path)
    for migration in queue_mod.MIGRATIONS[:version]:
        for statement in migration.split(";\n"):
            if statement.strip():
                conn.execute(statement)
    conn.execute(f"PRAGMA user_version = {version}")
    now = time.time()
    conn.executemany(
        "INSERT INTO jobs (id, name, spec_path, spec_digest, output, state, priority, tasks_total, tasks_left, "
        "created_at, started_at, finished_at) VALUES (?, ?, ?, 'd', ?, ?, ?, ?, ?, ?, ?, ?)",
        [(1, "old", "/tmp/old.toml", "/tmp/old.mp4", "done", 50, 1, 0, now - 90, now - 80, now - 70),
         (2, "live", "/tmp/live.toml", "/tmp/live.mp4", "running", 70, 2, 1, now - 60, now - 50, None)])
    conn.executemany(
        "INSERT INTO tasks (id, job_id, name, kind, key, model, params, state, priority, attempts, cached, worker, "
        "created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [(1, 1, "assemble", "assemble", "a1", None, '{"frames": 8}', "done", 50, 1, 0, "w-old", now - 90),
         (2, 2, "keyframe[0]", "keyframe", "k2", "m", '{"frame": 0, "seed": 3}', "done", 70, 2, 0, "w-old", now - 60),
         (3, 2, "assemble", "assemble", "a2", None, '{"frames": 8}', "queued", 70, 0, None, None, now - 60)])
    conn.execute("INSERT INTO deps (task_id, needs) VALUES (3, 2)")
    worker = {"name": "w-old", "pid": 1, "host": "elsewhere", "device": "cpu", "models": '["m"]', "lease": 60,
              "started_at": now - 100, "heartbeat_at": now - 5, **({"role": "render"} if version >= 2 else {})}
    conn.execute(f"INSERT INTO workers ({', '.join(worker)}) VALUES ({', '.join('?' * len(worker))})",
                 list(worker.values()))
    conn.execute("INSERT INTO blocklist (job_id, worker, kind, failures) VALUES (2, 'w-old', 'keyframe', 1)")
    conn.executemany("INSERT INTO events (ts, job_id, task_id, event, worker, data) VALUES (?, ?, ?, ?, ?, ?)",
                     [(now - 60, 2, None, "job.queued", None, '{"tasks": 2}'),
                      (now - 50, 2, 2, "task.started", "w-old", '{"attempt": 1}'),
                      (now - 40, 2, 2, "task.retry", "w-old", '{"error": "boom"}'),
                      (now - 30, 2, 2, "task.done", "w-old", '{"seconds": 1.5}')])
    conn.commit()
    conn.close()


@pytest.mark.parametrize("version", [1, 2])
def test_an_old_database_is_upgraded_with_its_rows_and_works(tmp_path, version):
    path = tmp_path / "old.db"
    old_database(path, version)
    q = Queue(path)  # today's farm opens it: every later migration runs, in order
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == queue_mod.SCHEMA_VERSION
    assert {"role", "node", "driver_pid", "driver_host"} <= {r[1] for r in conn.execute("PRAGMA table_info(workers)")}
    assert {"owner", "published"} <= {r[1] for r in conn.execute("PRAGMA table_info(jobs)")}
    index = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'tasks_claim'").fetchone()[0]
    assert "kind" in index  # the covering claim index replaced version 1's

    # the rows are all there, as they were, with the new columns' values for old rows
    jobs = [(j["id"], j["name"], j["state"], j["priority"], j["tasks_left"], j["owner"], j["published"])
            for j in q.jobs()]
    assert jobs == [(1, "old", "done", 50, 0, None, "published"), (2, "live", "running", 70, 1, None, None)]
    tasks = [(t["name"], t["state"], t["attempts"], t["params"]) for t in q.tasks(2)]
    assert tasks == [("keyframe[0]", "done", 2, {"frame": 0, "seed": 3}), ("assemble", "queued", 0, {"frames": 8})]
    assert q.needs(3) == ["k2"]
    (worker,) = q.workers()
    assert (worker["name"], worker["models"], worker["role"]) == ("w-old", ["m"], "render" if version >= 2 else "farm")
    assert worker["node"] is None and worker["driver_pid"] is None
    assert q.conn.execute("SELECT failures FROM blocklist WHERE worker = 'w-old'").fetchone()[0] == 1
    assert [e["event"] for e in q.events(2)] == ["job.queued", "task.started", "task.retry", "task.done"]
    assert q.live_keys() == {"k2", "a2"}  # the old done job counts as published: gc may take its entries

    # and it works: the queued assembly is claimed and completed, and a new job goes in beside them
    t = q.claim("w-new", lease=30)
    assert (t["id"], t["name"], t["attempts"], t["lease_owner"]) == (3, "assemble", 1, "w-new")
    assert q.complete(t, "w-new", cached=False, seconds=0.5)
    assert q.job(2)["state"] == "done" and q.job(2)["tasks_left"] == 0 and q.job(2)["published"] is None
    assert [e["event"] for e in q.events(2)][-3:] == ["task.started", "task.done", "job.done"]
    new = q.submit(make_plan(1))
    assert new == 3 and q.claim("w-new")["job_id"] == new
    q.close()
    conn.close()
