"""The SQLite queue: schema versions, the claim rule, dependencies, failure and leases.

A contract: every test taking `q` runs against an in-memory and a file database (as huey's
StorageTests run one suite over each storage), so what they check is the queue's, not one
database file's."""

import sqlite3
import time
from pathlib import Path

import pytest

from farm import queue as queue_mod
from farm.errors import FarmError
from farm.plan import Plan, Task
from farm.queue import Queue


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
