"""Hold the line (issue 18): an old job never overwrites a newer video, a render that dies takes
its job with it, and a full disk is an error that loses nothing."""

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SMALL
from farm.queue.queue import Queue
from farm.spec.outputs import manifest_path


def farm(*args, timeout=300, env=None):
    return subprocess.run([sys.executable, "-m", "farm.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=env or os.environ.copy())


def start(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "farm.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


def db(home):
    return sqlite3.connect(home / "queue.db")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def job_states(home):
    return dict(db(home).execute("SELECT id, state FROM jobs ORDER BY id").fetchall())


def test_a_killed_renders_job_never_overwrites_the_newer_video(home_with_models, write_spec, farm_home, hold, cli):
    """The issue's scenario: SIGKILL a render mid-segment, edit the spec, render again, then `farm work`."""
    path = write_spec(SMALL.replace("a red boat", "version one"))
    held = hold("segment")
    proc = start("render", path, "-q", env=held.env())
    held.caught(farm_home / "queue.db", proc=proc)
    proc.kill()  # SIGKILL: no handler runs, its job and worker row stay behind
    proc.communicate()
    status = json.loads(farm("status", "--json").stdout)  # canceled at once: no worker ran since, no lease expired
    assert [j["state"] for j in status["jobs"]] == ["canceled"] and status["workers"] == []
    events = [json.loads(line) for line in farm("logs", "1").stdout.splitlines()]
    assert events[-1]["event"] == "job.canceled" and "farm render" in events[-1]["reason"]
    path.write_text(SMALL.replace("a red boat", "version two"))
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0, err
    video = Path(json.loads(out)["output"])
    newer = sha(video)

    work = farm("work", "--cpu", "--workers", "1", "--until-empty", "-q")
    assert work.returncode == 0, work.stderr
    assert sha(video) == newer  # on the old code: replaced by version one
    states = job_states(farm_home)
    assert states == {1: "canceled", 2: "done"}
    error = db(farm_home).execute("SELECT error FROM jobs WHERE id = 1").fetchone()[0]
    assert "farm render" in error and "stopped" in error
    status = json.loads(farm("status", "--json").stdout)
    assert not [j for j in status["jobs"] if j["state"] in ("queued", "running")]
    assert not [w for w in status["workers"] if w["name"].startswith("render:")]


def test_an_older_job_finished_later_is_superseded_not_published(home_with_models, write_spec, farm_home, cli):
    """A `farm submit`ted job (no render owns it) that finishes after a newer render of the same
    output was published: finished into the cache, not copied out, and said so everywhere."""
    path = write_spec(SMALL.replace("a red boat", "version one"))
    assert farm("submit", path).returncode == 0  # job 1, left in the queue
    path.write_text(SMALL.replace("a red boat", "version two"))
    code, out, err = cli("render", path, "--json", "-q")  # job 2, published now (no `farm work` is running)
    assert code == 0, err
    video = Path(json.loads(out)["output"])
    newer = sha(video)

    work = farm("work", "--cpu", "--until-empty", "-q")
    assert work.returncode == 0, work.stderr
    assert sha(video) == newer
    assert job_states(farm_home) == {1: "done", 2: "done"}
    published = dict(db(farm_home).execute("SELECT id, published FROM jobs").fetchall())
    assert published == {1: "superseded", 2: "published"}

    status = json.loads(farm("status", "1", "--json").stdout)
    assert status["published"] == "superseded"
    assert "not copied" in farm("status").stdout
    events = [json.loads(line) for line in farm("logs", "1").stdout.splitlines()]
    superseded = [e for e in events if e["event"] == "job.superseded"]
    assert len(superseded) == 1 and superseded[0]["by"] == 2
    manifest = json.loads(manifest_path(video).read_text())
    assert manifest["job"]["id"] == 2 and [s["job"] for s in manifest["superseded"]] == [1]
    # publishing job 1 again (a second worker, a retry) is idempotent: still superseded, nothing copied
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.run import publish

    queue = Queue(farm_home / "queue.db")
    assert publish.publish(queue, Cache(farm_home / "cache"), 1) is None
    assert sha(video) == newer and publish.outcome(queue, 1)["event"] == publish.SUPERSEDED

    # Nothing of job 1 is lost: rendering version one again is all cache hits, and publishes it.
    path.write_text(SMALL.replace("a red boat", "version one"))
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["tasks"]["run"] == 0 and sha(video) != newer


@pytest.mark.slow  # the handler test_interrupt's Ctrl-C goes through, for another signal
def test_sighup_cancels_a_render_like_ctrl_c(home_with_models, write_spec, farm_home, hold):
    held = hold("segment")
    proc = start("render", write_spec(SMALL), "-q", env=held.env())
    held.caught(farm_home / "queue.db", proc=proc)
    proc.send_signal(signal.SIGHUP)  # the terminal closed
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 129, err
    assert "Terminated (SIGHUP)" in err and "Traceback" not in err
    assert job_states(farm_home) == {1: "canceled"}
    assert db(farm_home).execute("SELECT count(*) FROM tasks WHERE state = 'running'").fetchone() == (0,)


def test_a_render_left_to_farm_work_is_canceled_when_the_render_dies(home_with_models, write_spec, farm_home, hold):
    """With `farm work` running, a render waits for it; kill the render and the workers drop its job."""
    held = hold("segment")  # never released: the worker must drop the held segment on its own
    work = start("work", "--cpu", "--workers", "1", "--lease", "6", "-q", start_new_session=True,
                 env=held.env())  # beats every 2 s
    try:
        deadline = time.time() + 60
        while not json.loads(farm("status", "--json").stdout)["workers"]:
            assert time.time() < deadline, "farm work did not start"
            time.sleep(0.3)
        proc = start("render", write_spec(SMALL), "-q")
        held.caught(farm_home / "queue.db", proc=proc)
        worker = db(farm_home).execute("SELECT lease_owner FROM tasks WHERE state = 'running'").fetchone()[0]
        assert not worker.startswith("render:")  # drawn by `farm work`
        proc.kill()
        proc.communicate()
        deadline = time.time() + 20
        while job_states(farm_home) != {1: "canceled"}:
            assert time.time() < deadline, job_states(farm_home)
            time.sleep(0.3)
        while db(farm_home).execute("SELECT count(*) FROM tasks WHERE state = 'running'").fetchone()[0]:
            assert time.time() < deadline + 30, "the worker kept running a canceled job's task"
            time.sleep(0.3)
        assert not list(farm_home.parent.glob("job/out/*.mp4"))
    finally:
        os.killpg(work.pid, signal.SIGTERM)
        work.communicate(timeout=60)


# --- a full disk ------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path, built_models):
    """FARM_HOME on a tmpfs of its own with the models and 1.5 MB to spare."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not let root mount a tmpfs (a container without CAP_SYS_ADMIN)")
    try:
        home = mount / "home"
        shutil.copytree(built_models, home / "models")
        yield home
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def fill(folder, leave):
    """Fill the disk under `folder` until `leave` bytes are free; return the filler file."""
    filler = folder / "filler"
    free = shutil.disk_usage(folder).free
    with open(filler, "wb") as f:
        f.write(b"\0" * max(0, free - leave))
    return filler


# The database fills, then the cache. The default suite runs the first point; the later ones are
# slow (test_interrupt fails the cache's writes with ENOSPC in-process, in the default suite).
@pytest.mark.parametrize("leave", [64 * 1024, pytest.param(300 * 1024, marks=pytest.mark.slow),
                                   pytest.param(600 * 1024, marks=pytest.mark.slow)])
def test_a_full_disk_is_an_error_that_loses_nothing(small_disk, write_spec, monkeypatch, leave, cli):
    """The queue database or the cache runs out of space mid-render: exit 1 with a message that
    says so (not "internal error"), no job left running with nobody behind it, and once space is
    freed the same command renders."""
    monkeypatch.setenv("FARM_HOME", str(small_disk))
    path = write_spec(SMALL)
    Queue(small_disk / "queue.db").close()  # the database exists; the render's own writes meet the full disk
    filler = fill(small_disk, leave)
    r = farm("render", path, "--json", "-q", "--force")  # past the free-disk estimate: the disk fills meanwhile
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert "internal error" not in r.stderr and "Traceback" not in r.stderr
    assert "disk" in r.stderr and ("full" in r.stderr or "I/O" in r.stderr), r.stderr

    filler.unlink()
    status = json.loads(farm("status", "--json").stdout)
    assert not [j for j in status["jobs"] if j["state"] in ("queued", "running")], status["jobs"]
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0, err
    assert json.loads(out)["frames"] == 18


# --- gc and publishing --------------------------------------------------------------------------


def test_gc_keeps_a_done_jobs_entries_until_it_is_published(home_with_models, write_spec, farm_home, cli,
                                                            monkeypatch):
    """`farm gc` (or a worker pruning to cache_max_size) between a job's `done` and its publish
    used to remove what publish reads: the video, or the keyframes its contact sheet shows."""
    from farm.queue.cache import Cache
    from farm.run import publish as publisher, worker as workers

    path = write_spec(SMALL)
    assert farm("submit", path).returncode == 0
    queue, cache = Queue(farm_home / "queue.db"), Cache(farm_home / "cache")
    with workers.Worker(queue, cache) as w:
        w.drain()  # no job-done hook: as if the publishing worker were slow, not published yet
    assert queue.job(1)["state"] == "done" and queue.job(1)["published"] is None

    code, out, err = cli("gc", "--max-size", "0", "--json")
    assert code == 0, err
    assert json.loads(out)["removed"] == 0 and json.loads(out)["protected"] == len(queue.tasks(1))

    sidecars = publisher.publish(queue, cache, 1, "late")
    assert sidecars is not None and queue.job(1)["published"] == "published"
    data = json.loads(Path(sidecars["manifest"]).read_text())
    assert data["video"]["frames"] == 18
    code, out, _ = cli("gc", "--max-size", "0", "--json")  # published: now it may go
    assert json.loads(out)["removed"] == len({t["key"] for t in queue.tasks(1)})
