"""The farm: concurrent claims, worker processes, leases after SIGKILL, retries and the
blocklist, priorities and affinity, pause/cancel/retry, signals, status."""

import hashlib
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL
from farm.plan.plan import Plan, Task
from farm.queue import queue as queue_mod
from farm.queue.cache import Cache
from farm.queue.queue import Queue
from farm.run.runner import HANDLERS
from farm.run.worker import Worker


class FakeSpec:
    name = "bench"
    path = Path("/tmp/bench.toml")
    digest = "d"
    out = Path("/tmp/bench.mp4")


def flat_plan(n, model=None, prefix="t"):
    return Plan(FakeSpec(), [Task(f"{prefix}{i}", "noop", f"{prefix}{i}", {}, (), model) for i in range(n)])


def _hammer(db, name, ready, start, out):
    q = Queue(db)
    ready.release()
    start.wait()
    got = []
    while True:
        t = q.claim(name, lease=30)
        if t is None:
            break
        got.append(t["id"])
        time.sleep(0.001)  # the task: without any, one process can hold on to the lock for all 400
        assert q.complete(t, name, cached=False, seconds=0)
    q.close()
    out.put(got)


def test_concurrent_claims_never_double_and_never_lose(tmp_path):
    db = tmp_path / "q.db"
    q = Queue(db)
    for j in range(4):
        q.submit(flat_plan(100, prefix=f"j{j}-"))
    ctx = mp.get_context("spawn")
    ready, start, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(str(db), f"w{i}", ready, start, out)) for i in range(4)]
    for p in procs:
        p.start()
    for _ in procs:  # all connected before any claims
        ready.acquire(timeout=60)
    start.set()
    claimed = [out.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    ids = [i for got in claimed for i in got]
    assert len(ids) == 400 and len(set(ids)) == 400  # every task once, none twice
    assert sum(1 for got in claimed if got) >= 2  # the work really was shared
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'done'").fetchone()[0] == 400
    assert conn.execute("SELECT count(*) FROM events WHERE event = 'task.started'").fetchone()[0] == 400
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == 4


def test_priority_is_never_passed_over_for_affinity(tmp_path):
    q = Queue(tmp_path / "q.db")
    q.submit(flat_plan(3, model="warm", prefix="low"), priority=10)
    q.submit(flat_plan(1, model="cold", prefix="high"), priority=90)
    t = q.claim("w", models={"warm"})
    assert t["name"] == "high0"


def test_affinity_prefers_warm_models_but_never_starves_a_task(tmp_path):
    q = Queue(tmp_path / "q.db")
    q.submit(Plan(FakeSpec(), [Task("cold", "noop", "c", {}, (), "cold")]
                  + [Task(f"warm{i}", "noop", f"w{i}", {}, (), "warm") for i in range(40)]))
    order = []
    while (t := q.claim("w", models={"warm"})) is not None:
        order.append(t["name"])
        q.complete(t, "w", cached=False, seconds=0)
    assert order[:queue_mod.MAX_SKIPS] == [f"warm{i}" for i in range(queue_mod.MAX_SKIPS)]
    assert order[queue_mod.MAX_SKIPS] == "cold"  # passed over exactly MAX_SKIPS times, then taken
    # a worker holding nothing takes strict queue order
    q.submit(Plan(FakeSpec(), [Task("a", "noop", "a", {}, (), "x"), Task("b", "noop", "b", {}, (), "y")]))
    assert q.claim("cold-worker")["name"] == "a"


def test_pause_cancel_retry_priority_from_the_cli(tmp_path, cli, monkeypatch):
    db = tmp_path / "q.db"
    q = Queue(db)
    a = q.submit(flat_plan(2, prefix="a"))
    b = q.submit(flat_plan(2, prefix="b"))
    assert cli("pause", a, "--db", db)[0] == 0
    assert q.claim("w")["job_id"] == b  # a is paused
    assert cli("pause", "--db", db)[0] == 0
    assert q.claim("w") is None  # the whole farm is paused
    cli("resume", "--db", db)
    cli("resume", a, "--db", db)
    assert cli("priority", b, 80, "--db", db)[0] == 0
    assert q.claim("w")["job_id"] == b  # b's last task first now
    code, out, _ = cli("cancel", a, "--db", db)
    assert code == 0 and q.job(a)["state"] == "canceled" and q.claim("w") is None
    assert cli("cancel", a, "--db", db)[0] == 2  # already canceled: a clear error
    code, out, _ = cli("retry", a, "--db", db)
    assert code == 0 and "2 task(s)" in out and q.job(a)["state"] == "queued"
    assert q.claim("w")["job_id"] == a
    code, _, err = cli("status", 999, "--db", db)
    assert code == 2 and "No job 999" in err


def test_retries_blocklist_and_failed_job_in_status(home_with_models, write_spec, cli, monkeypatch, farm_home):
    from farm.plan import plan
    from farm.spec import spec

    monkeypatch.setattr(queue_mod, "BACKOFF_CAP", 0)
    q = Queue(farm_home / "queue.db")
    job = q.submit(plan.build(spec.load(write_spec(SMALL))), max_attempts=10)
    real = HANDLERS["keyframe"]

    def flaky(runner, params, out):
        if runner is bad.runner:
            raise RuntimeError("driver error on this box")
        return real(runner, params, out)

    monkeypatch.setitem(HANDLERS, "keyframe", flaky)
    cache = Cache(farm_home / "cache")
    with Worker(q, cache, name="bad") as bad, Worker(q, cache, name="good") as good:
        stats = bad.drain(job)
        assert stats["failed"] == queue_mod.BLOCK_AFTER and stats["run"] == 0
        row = q.conn.execute("SELECT failures FROM blocklist WHERE worker = 'bad' AND kind = 'keyframe'").fetchone()
        assert row[0] == queue_mod.BLOCK_AFTER
        assert q.claim("bad", job=job) is None  # blocklisted for keyframes of this job
        good.drain(job)
    assert q.job(job)["state"] == "done"
    retries = [e for e in q.events(job) if e["event"] == "task.retry"]
    assert len(retries) == queue_mod.BLOCK_AFTER and all(e["worker"] == "bad" for e in retries)

    # A task that keeps failing fails its job; the error is kept and shown.
    job2 = q.submit(plan.build(spec.load(write_spec(SMALL.replace("a red boat", "a red ship"), "two.toml"))),
                    max_attempts=2)
    with Worker(q, cache, name="bad") as bad:
        bad.drain(job2)
    code, out, _ = cli("status", job2, "--json")
    status = json.loads(out)
    assert status["state"] == "failed" and "driver error on this box" in status["error"]
    assert status["tasks"]["failed"] == 1


def test_out_of_memory_frees_models_and_retries_once(home_with_models, write_spec, monkeypatch, farm_home):
    import torch

    from farm.plan import plan
    from farm.spec import spec

    q = Queue(farm_home / "queue.db")
    job = q.submit(plan.build(spec.load(write_spec(SMALL))))
    real = HANDLERS["segment"]
    calls = {"n": 0}

    def oom_once(runner, params, out):
        calls["n"] += 1
        if calls["n"] == 1:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        return real(runner, params, out)

    monkeypatch.setitem(HANDLERS, "segment", oom_once)
    with Worker(q, Cache(farm_home / "cache")) as w:
        w.drain(job)
        assert w.runner.calls["unload"] >= 1  # the model cache was emptied before the retry
    assert q.job(job)["state"] == "done"
    seg0 = next(t for t in q.tasks(job) if t["name"] == "segment[0]")
    assert seg0["attempts"] == 1  # retried in place, not counted as a failure


def test_model_cache_is_bounded_by_memory(home_with_models, write_spec, farm_home):
    from farm import models
    from farm.plan import plan
    from farm.spec import spec

    need = models.footprint(models.resolve("tiny"))
    q = Queue(farm_home / "queue.db")
    job = q.submit(plan.build(spec.load(write_spec(SMALL))))
    with Worker(q, Cache(farm_home / "cache"), memory_budget=need + 1000) as w:  # room for one model only
        w.drain(job)
        assert w.runner.calls["load"] == 2 and w.runner.calls["unload"] == 1
        assert w.held() == {models.resolve("tiny-video").identity}
    assert q.job(job)["state"] == "done"


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def work_proc():
    """Start `farm work --cpu ...` in its own session; whatever a test leaves running is
    killed (the whole process group) when it ends, pass or fail."""
    started = []

    def start(*args, env=None):
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "work", "--cpu", *map(str, args)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env or os.environ.copy(), start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.communicate()


def wait_for(predicate, timeout=120, proc=None):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process exited early: {proc.communicate()}")
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("timed out")


def in_flight(db, kind="segment", name=None):
    """(pid of the worker holding it, task id, task name) of a running task of this kind (or
    this name), else None."""
    column, value = ("name", name) if name is not None else ("kind", kind)
    try:
        conn = sqlite3.connect(db)
        row = conn.execute("SELECT w.pid, t.id, t.name FROM workers w JOIN tasks t ON t.lease_owner = w.name "
                           f"WHERE t.{column} = ? AND t.state = 'running'", (value,)).fetchone()
        conn.close()
        return row
    except sqlite3.OperationalError:
        return None


def test_sigkill_mid_task_lease_expires_and_the_video_is_identical(built_models, write_spec, cli, tmp_path,
                                                                   monkeypatch, work_proc, hold):
    import shutil

    path = write_spec(SMALL)
    clean_home, farm_home = tmp_path / "clean", tmp_path / "farm"
    for h in (clean_home, farm_home):
        shutil.copytree(built_models, h / "models")
    monkeypatch.setenv("FARM_HOME", str(clean_home))
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0, err
    clean = sha(json.loads(out)["output"])

    monkeypatch.setenv("FARM_HOME", str(farm_home))
    code, out, _ = cli("submit", path, "--json")
    job = json.loads(out)["job"]
    held = hold("segment")
    proc = work_proc("--workers", "1", "--until-empty", "--quiet", env=held.env())  # leases of 60 s
    db = farm_home / "queue.db"
    pid, task_id, name = wait_for(lambda: in_flight(db), proc=proc)  # held from here until released
    os.kill(pid, signal.SIGKILL)  # the worker dies mid-segment; the supervisor starts another
    killed = time.time()
    held.release()  # which runs the segment through
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "died" in err and "restarting" in err
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone() == ("done",)
    events = [e for (e,) in conn.execute("SELECT event FROM events WHERE task_id = ? ORDER BY id", (task_id,))]
    assert events == ["task.started", "task.lease_expired", "task.started", "task.done"]
    expired = conn.execute("SELECT ts FROM events WHERE task_id = ? AND event = 'task.lease_expired'",
                           (task_id,)).fetchone()[0]
    assert expired - killed < 30  # its pid gone from this host: given back at once, not a 60-s lease later
    done = conn.execute("SELECT task_id, count(*) FROM events WHERE event IN ('task.done', 'task.cached') "
                        "GROUP BY task_id HAVING count(*) > 1").fetchall()
    assert done == []  # no task counted twice
    assert not list((farm_home / "cache").rglob(".tmp-*"))  # the killed worker's partial output is not in the cache
    assert sha(path.parent / "out" / "small.mp4") == clean
    written = json.loads((path.parent / "out" / "small.manifest.json").read_text())  # the worker wrote it
    assert written["job"]["id"] == job and (path.parent / "out" / "small.contact.png").is_file()


def test_render_uses_running_workers_then_sigterm_stops_them(home_with_models, write_spec, cli, farm_home, work_proc,
                                                              hold):
    held = hold("segment", armed=False)  # armed once the first render is done
    proc = work_proc("--workers", "1", "--lease", "5", "--grace", "1", "--quiet", env=held.env())
    db = farm_home / "queue.db"
    wait_for(lambda: in_flight_worker(db), proc=proc)
    code, out, err = cli("render", write_spec(SMALL), "--json", "-q")
    assert code == 0, err
    job = json.loads(out)["job"]
    conn = sqlite3.connect(db)
    runners = {w for (w,) in conn.execute("SELECT DISTINCT worker FROM tasks WHERE job_id = ?", (job,))}
    assert runners and not any(w.startswith("render:") for w in runners)  # the farm drew it, not the CLI

    # status --json while a worker runs a long task
    held.arm()  # its first segment is held until the worker is stopped
    code, out, _ = cli("submit", write_spec(SMALL.replace("a red boat", "a slow boat"), "slow.toml"), "--json")
    slow = json.loads(out)["job"]
    assert held.wait(proc=proc)["task"] == "segment[0]"
    wait_for(lambda: in_flight(db))

    def loaded():  # a worker reports its models with its next heartbeat (every third of a lease)
        status = json.loads(cli("status", "--json")[1])
        return status if status["workers"] and status["workers"][0]["models"] else None
    status = wait_for(loaded, timeout=30)
    (w,) = status["workers"]
    assert w["pid"] != os.getpid() and w["device"] == "cpu" and w["task"]["job"] == slow
    assert len(w["models"]) >= 1 and w["task"]["name"].startswith("segment")
    job_status = next(j for j in status["jobs"] if j["job"] == slow)
    assert job_status["state"] == "running" and job_status["tasks"]["running"] == 1

    t0 = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert time.time() - t0 < 30  # grace 1 s, plus start-up of nothing: bounded
    assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'running'").fetchone()[0] == 0
    assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] == 0
    released = conn.execute("SELECT count(*) FROM events WHERE event = 'task.released'").fetchone()[0]
    assert released == 1  # the long segment went back to the queue, not failed
    assert conn.execute("SELECT count(*) FROM tasks WHERE state = 'failed'").fetchone()[0] == 0


def in_flight_worker(db):
    try:
        conn = sqlite3.connect(db)
        n = conn.execute("SELECT count(*) FROM workers").fetchone()[0]
        conn.close()
        return n
    except sqlite3.OperationalError:
        return 0


def test_a_worker_that_must_load_takes_a_model_no_one_else_is_running(tmp_path):
    q = Queue(tmp_path / "q.db")
    q.submit(Plan(FakeSpec(), [Task(f"a{i}", "noop", f"a{i}", {}, (), "a") for i in range(3)]
                  + [Task(f"b{i}", "noop", f"b{i}", {}, (), "b") for i in range(3)]))
    first = q.claim("w1", models=set())
    second = q.claim("w2", models=set())
    assert first["name"] == "a0" and second["name"] == "b0"  # w2 spreads to b rather than load a as well
    assert q.claim("w3", models=set())["name"] == "a1"  # every model is running: strict order again
    assert q.claim("w2", models={"b"})["name"] == "b1"  # and a warm model still comes first


# --- the test hook that holds a task in flight (farm/models/pipeline.py: `hold`) -------------------------


def test_the_hold_hook_holds_at_a_step_until_released_and_a_lost_lease_still_stops_it(home_with_models, write_spec,
                                                                                      tmp_path, monkeypatch):
    import threading

    from farm.models import pipeline
    from farm.plan import plan
    from farm.run.worker import LeaseLost
    from farm.spec import spec

    monkeypatch.delenv("FARM_TEST_HOLD", raising=False)
    assert pipeline._steps(None, {"frame": 0}, "keyframe") == {}  # unset: nothing at all
    folder = tmp_path / "hold"
    monkeypatch.setenv("FARM_TEST_HOLD", str(folder))
    calls = []
    step = pipeline._steps(calls.append, {"frame": 1}, "clip")["callback_on_step_end"]
    assert step(None, 0, None, {"x": 1}) == {"x": 1} and calls == [0]  # not armed (no folder): runs through

    folder.mkdir()
    monkeypatch.setenv("FARM_TEST_HOLD_TASKS", "segment[1]")
    assert pipeline._steps(None, {"frame": 0}, "keyframe") == {}  # not a task to hold
    step = pipeline._steps(calls.append, {"frame": 1}, "clip")["callback_on_step_end"]
    thread = threading.Thread(target=step, args=(None, 0, None, {}), daemon=True)
    thread.start()
    (marker,) = wait_for(lambda: list(folder.glob("*.held")), timeout=10)
    assert marker.name == f"segment[1]@{os.getpid()}.held"
    assert json.loads(marker.read_text()) == {"task": "segment[1]", "pid": os.getpid()}
    seen = len(calls)
    time.sleep(0.5)
    assert thread.is_alive() and len(calls) > seen + 3  # held, checking the lease all the while
    (folder / "release").touch()
    thread.join(5)
    assert not thread.is_alive()
    calls.clear()
    step(None, 0, None, {})  # released: nothing holds any more
    assert calls == [0]

    lost, raised = threading.Event(), []

    def check_lease(i):
        if lost.is_set():
            raise LeaseLost()

    def run():
        try:
            pipeline._steps(check_lease, {"frame": 1}, "clip")["callback_on_step_end"](None, 0, None, {})
        except LeaseLost as e:
            raised.append(e)

    (folder / "release").unlink()
    marker.unlink()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_for(lambda: thread.is_alive() and len(list(folder.glob("*.held"))), timeout=10)
    lost.set()
    thread.join(5)
    assert not thread.is_alive() and len(raised) == 1  # a held task stops as a running one does

    # the markers name tasks as the plan does
    for task in plan.build(spec.load(write_spec(SMALL))).tasks:
        if task.model is not None:
            kind = "keyframe" if task.kind == "keyframe" else "clip"
            assert pipeline._name(task.params.to_json(), kind) == task.name  # what the worker passes


# --- farm logs --follow --------------------------------------------------------------------------


def test_logs_follow_prints_events_as_they_are_added_and_ends_with_the_job(tmp_path):
    import queue as lines_queue
    import threading

    db = tmp_path / "q.db"
    q = Queue(db)

    def follow(job):
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "logs", str(job), "--follow", "--db", str(db)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lines = lines_queue.Queue()
        threading.Thread(target=lambda: [lines.put(json.loads(line)) for line in proc.stdout], daemon=True).start()
        return proc, lambda: lines.get(timeout=30)

    job = q.submit(flat_plan(2))
    proc, line = follow(job)
    try:
        assert line()["event"] == "job.queued"
        t = q.claim("w1")
        started = line()
        assert {k: started[k] for k in ("event", "job", "task", "worker")} == \
            {"event": "task.started", "job": job, "task": "t0", "worker": "w1"}
        time.sleep(1.5)  # three of its polls: a running job is followed, not left
        assert proc.poll() is None
        q.complete(t, "w1", cached=False, seconds=0.25)
        done = line()
        assert (done["event"], done["task"], done["seconds"]) == ("task.done", "t0", 0.25)
        t = q.claim("w1")
        q.complete(t, "w1", cached=True, seconds=0)
        assert [line()["event"] for _ in range(3)] == ["task.started", "task.cached", "job.done"]
        _, err = proc.communicate(timeout=30)  # the job is done: it ends
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()

    job = q.submit(flat_plan(1, prefix="c"))  # a job canceled while followed ends it too
    proc, line = follow(job)
    try:
        assert line()["event"] == "job.queued"
        q.cancel(job, "canceled by the user")
        canceled = line()
        assert canceled["event"] == "job.canceled" and canceled["reason"] == "canceled by the user"
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


# --- farm work: --gpus, and a worker that keeps dying ---------------------------------------------


def test_work_gpus_is_parsed_into_one_worker_per_gpu_and_refused_with_exit_2(cli, monkeypatch, farm_home):
    from farm.run import supervisor

    monkeypatch.setattr(supervisor, "_gpu_count", lambda: 4)  # no GPU needed: the count is what parsing reads
    started = []
    monkeypatch.setattr(supervisor, "work", lambda slots, **kw: started.append(slots) or 0)
    for value, gpus in (("all", [0, 1, 2, 3]), ("1,3", [1, 3]), ("2", [2]), (" 0, 2 ", [0, 2]), ("3,", [3])):
        code, _, err = cli("work", "--gpus", value)
        assert code == 0, (value, err)
        slots = started.pop()
        assert [(s.index, s.device, s.env) for s in slots] == \
            [(n, f"cuda:{i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for n, i in enumerate(gpus)], value
    for value, words in (("x", "expects `all` or GPU indices"), ("0;1", "expects"), ("1.5", "expects"),
                         ("4", "this machine has 4 GPU(s) (indices 0..3)"), ("-1", "has 4 GPU(s)"),
                         (",", "has 4 GPU(s)"), ("0,7", "has 4 GPU(s)")):
        code, out, err = cli("work", "--gpus", value)
        assert code == 2 and out == "" and words in err and "Traceback" not in err, (value, err)
    code, _, err = cli("work", "--gpus", "0", "--cpu")
    assert code == 2 and "not both" in err
    assert started == []  # no refused value started anything

    monkeypatch.setattr(supervisor, "_gpu_count", lambda: 0)
    code, _, err = cli("work", "--gpus", "all")
    assert code == 2 and "no CUDA GPU is visible" in err and "--cpu" in err
    for value in ("0", "1,2"):  # not "(indices 0..-1)": there is no index to give
        code, _, err = cli("work", "--gpus", value)
        assert code == 2 and "no CUDA GPU is visible" in err and "--cpu" in err and "..-1" not in err, err
    assert cli("work")[0] == 0  # no --gpus on a machine without one: a CPU worker
    assert [s.device for s in started.pop()] == ["cpu"]


def die_at_once(slot, opts):
    """A worker process that exits at once with code 3 (a crashed driver, say)."""
    os._exit(3)


def test_a_worker_that_keeps_dying_is_restarted_at_most_max_restarts_times(tmp_path, monkeypatch, capsys):
    from farm.run import supervisor

    monkeypatch.setattr(supervisor, "child", die_at_once)  # what each spawned process runs
    started = time.time()
    code = supervisor.work([supervisor.Slot(0, "cpu", {})], db=str(tmp_path / "q.db"), lease=5, until_empty=True,
                           grace=1, memory=None, progress=False)
    err = capsys.readouterr().err
    assert code == 1  # not 0: nothing drains the queue any more, and a script must see it
    assert err.count("farm: worker cpu died (exit code 3); restarting it.") == supervisor.MAX_RESTARTS
    assert err.strip().splitlines()[-2] == (f"farm: worker cpu died {supervisor.MAX_RESTARTS + 1} times in a minute "
                                            f"(last exit code 3); not restarting it.")
    assert err.strip().splitlines()[-1].startswith("farm: gave up on 1 of 1 worker(s) (cpu)")
    assert time.time() - started < 60  # it gave up, within the minute (and returned: the loop ended)
