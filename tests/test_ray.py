"""`farm work --ray`: the same jobs drawn by Ray actors on a local Ray instance (CPU actors,
tiny models): byte-identical videos, an actor killed mid-task, affinity across actors, and
Ray's absence. Skipped, saying why, where Ray is not installed."""

import hashlib
import importlib.util
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import SMALL, THREADS
from test_farm import in_flight, wait_for

# Ray started by the tests (and by `--ray local`) listens on the loopback address only: the
# simulated cluster's nodes by their own option; Ray in this process as farm.ray.cluster.connect
# starts it (set here too, before any test imports Ray, whichever test runs first)
LOOPBACK = {"node_ip_address": "127.0.0.1"}
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                               reason="Ray is an optional extra: pip install 'farm[ray]'")


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def reference_then_submit(cli, path, built_models, tmp_path, monkeypatch):
    """The reference, `farm render` in this process in a home of its own (its video's sha,
    the video then removed), and the same spec submitted in a second home, now FARM_HOME,
    for Ray to draw: (reference sha, Ray's home, job id)."""
    clean_home, ray_home = homes(built_models, tmp_path, "clean", "ray")
    monkeypatch.setenv("FARM_HOME", str(clean_home))
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0, err
    video = Path(json.loads(out)["output"])
    clean = sha(video)
    video.unlink()
    monkeypatch.setenv("FARM_HOME", str(ray_home))
    return clean, ray_home, json.loads(cli("submit", path, "--json")[1])["job"]


def homes(built_models, tmp_path, *names):
    import shutil

    out = []
    for name in names:
        shutil.copytree(built_models, tmp_path / name / "models")
        out.append(tmp_path / name)
    return out


def test_without_ray_the_cli_says_how_to_get_it(cli, monkeypatch, farm_home):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError, installed or not
    code, out, err = cli("work", "--ray", "local", "--cpu", "--until-empty")
    assert code == 2 and out == ""
    assert "pip install 'farm[ray]'" in err and "Traceback" not in err
    code, _, err = cli("work", "--ray", "auto", "--gpus", "0")
    assert code == 2 and "--gpus" in err


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance for the tests below (2 CPUs: two CPU actors), started as
    `farm work --ray local` starts its own."""
    if importlib.util.find_spec("ray") is None:
        pytest.skip("Ray is an optional extra: pip install 'farm[ray]'")
    from farm.ray.cluster import connect, disconnect

    yield connect("local", cpus=2)
    disconnect()


def driver_for(home, **kwargs):
    """A driver with two CPU actors, each with the in-process reference render's torch threads
    (conftest's THREADS): on the CPU, torch sums in another order with another thread count,
    and the pixels differ."""
    from farm.queue.cache import Cache
    from farm.queue.queue import Queue
    from farm.ray.cluster import Driver

    kwargs.setdefault("env", {"FARM_HOME": str(home)})
    return Driver(Queue(home / "queue.db"), Cache(home / "cache"), actors=2, gpu=False, threads=THREADS, **kwargs)


@needs_ray
def test_actor_killed_mid_clip_of_a_chain_lease_ends_and_the_video_is_identical(ray_local, built_models, write_spec,
                                                                                 cli, tmp_path, monkeypatch, hold):
    """A segment longer than the motion model's window is a chain of clip tasks, each reading
    the one before it (and the last the next keyframe), so an actor must be sent exactly what it
    depends on. The actor drawing the second clip is killed mid-task: the clip goes back to the
    queue at once, an actor (sent the first clip's frames by the driver) draws it again, and the
    video is byte-identical to `farm render` in-process."""
    from test_time import shot

    # 97 frames at the twin's 16 fps: two clips; one retry, as a worker's death spends an attempt
    path = write_spec(shot(name="chain", motion="tiny-video", seconds=6, fps=8).replace("retries = 0", "retries = 1"))
    clean, ray_home, job = reference_then_submit(cli, path, built_models, tmp_path, monkeypatch)
    held = hold("segment[0].clip[1]")  # in the actors' environment (the driver sets it), not in this process's
    driver = driver_for(ray_home, lease=60, env={"FARM_HOME": str(ray_home), **held.vars()})
    result = {}
    thread = threading.Thread(target=lambda: result.update(code=driver.run()), daemon=True)
    thread.start()
    db = ray_home / "queue.db"
    marker = held.wait()
    pid, task_id, _ = wait_for(lambda: in_flight(db, name="segment[0].clip[1]"))
    assert marker == {"task": "segment[0].clip[1]", "pid": pid}

    status = json.loads(cli("status", "--json")[1])  # Ray actors are workers, with their node
    actors = {w["pid"]: w for w in status["workers"]}
    assert len(actors) == 2 and os.getpid() not in actors
    assert actors[pid]["node"] == ray_local.get_runtime_context().get_node_id()
    assert actors[pid]["task"] is not None and actors[pid]["device"] == "cpu"

    os.kill(pid, signal.SIGKILL)  # the actor's process dies mid-clip; Ray restarts it
    killed = time.time()
    held.release()  # the clip's next attempt runs through
    thread.join(timeout=300)
    assert not thread.is_alive() and result["code"] == 0
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone() == ("done",)
    events = [e for (e,) in conn.execute("SELECT event FROM events WHERE task_id = ? ORDER BY id", (task_id,))]
    assert events == ["task.started", "task.lease_expired", "task.started", "task.done"]
    expired = conn.execute("SELECT ts FROM events WHERE task_id = ? AND event = 'task.lease_expired'",
                           (task_id,)).fetchone()[0]
    assert expired - killed < 30  # the driver, told by Ray, gave it back at once: not a 60-s lease later
    attempts = conn.execute("SELECT attempts FROM tasks WHERE id = ?", (task_id,)).fetchone()[0]
    assert attempts == 2
    done = conn.execute("SELECT task_id, count(*) FROM events WHERE event IN ('task.done', 'task.cached') "
                        "GROUP BY task_id HAVING count(*) > 1").fetchall()
    assert done == []  # no task counted twice
    restarted = conn.execute("SELECT count(*) FROM events WHERE event = 'worker.started'").fetchone()[0]
    # Two actors; Ray restarts the killed one, which is counted once it answers, and the job (its
    # clip taken by the other actor) may end before it does.
    assert restarted in (2, 3)
    clips = [w for (w,) in conn.execute("SELECT worker FROM tasks WHERE job_id = ? AND kind = 'clip'", (job,))]
    assert len(clips) == 2 and all(w.startswith("ray:") for w in clips)
    assert sha(path.parent / "out" / "chain.mp4") == clean
    written = json.loads((path.parent / "out" / "chain.manifest.json").read_text())
    assert written["job"]["id"] == job and (path.parent / "out" / "chain.contact.png").is_file()


ONE_FRAME = """
[shot]
name = "{name}"
fps = 8
size = [32, 32]
seed = {seed}
out = "out/{name}.mp4"

[keyframes]
model = "{model}"
steps = 2

[motion]
model = "hold"

[[frames]]
prompt = "a boat"
seconds = 0.5
"""


@needs_ray
@pytest.mark.slow  # affinity as the queue's claims apply it (test_queue, test_sweep), through Ray's actors
def test_two_models_on_two_actors_each_keeps_its_own(ray_local, built_models, write_spec, cli, tmp_path,
                                                     monkeypatch):
    (home,) = homes(built_models, tmp_path, "ray")
    monkeypatch.setenv("FARM_HOME", str(home))
    # shots of two keyframe models, submitted as a studio would: one of each, then again
    specs = [write_spec(ONE_FRAME.format(name=f"{model}-{seed}", seed=seed, model=model), f"{model}-{seed}.toml")
             for seed in (1, 2) for model in ("tiny", "tiny-sdxl")]
    code, out, err = cli("submit", *specs, "--json")
    assert code == 0, err
    driver = driver_for(home)
    assert driver.run() == 0
    conn = sqlite3.connect(home / "queue.db")
    assert conn.execute("SELECT count(*) FROM jobs WHERE state = 'done'").fetchone()[0] == 4
    by_model = {}
    for model, worker in conn.execute("SELECT model, worker FROM tasks WHERE model IS NOT NULL"):
        by_model.setdefault(model, set()).add(worker)
    assert len(by_model) == 2 and all(len(w) == 1 for w in by_model.values())  # each model stayed on one actor
    assert len(set().union(*by_model.values())) == 2  # ...a different one each
    calls = driver.calls()
    assert sorted(c["load"] for c in calls.values()) == [1, 1]  # each actor loaded one model, once
    assert sorted(c["keyframe"] for c in calls.values()) == [2, 2]
    for spec in specs:  # and the videos are there
        assert (spec.parent / "out" / f"{spec.stem}.mp4").stat().st_size > 0


def test_an_actor_finds_a_hub_model_in_its_own_nodes_cache_or_says_it_is_missing(tmp_path, monkeypatch):
    from dataclasses import replace

    from farm.errors import FarmError
    from farm.plan import tasks
    from farm.ray.cluster import ModelMissing, _on_this_node
    from farm.run.runner import Runner

    model = tasks.Model("hub:org/big@abc123", "StableDiffusionXLPipeline", name="sdxl",
                        source="/head/hf/models--org--big/snapshots/abc123")
    work = tasks.Keyframe(0, 64, 64, model=model, prompt="x", negative_prompt="", seed=0, steps=2, guidance=5.0)
    task = {"name": "keyframe[0]", "kind": "keyframe", "model": model.identity, "params": work.to_json()}
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ModelMissing) as e:
        _on_this_node(task)
    assert "farm models pull sdxl" in e.value.message
    assert isinstance(e.value, FarmError) and Runner(None, device="cpu").failure(task, e.value) == (
        e.value.message, True)  # retried: another node may have it
    here = tmp_path / "hub" / "models--org--big" / "snapshots" / "abc123"
    here.mkdir(parents=True)
    moved = _on_this_node(task)
    assert tasks.of(moved).model.source == str(here) and tasks.of(moved).prompt == "x"
    assert tasks.of(task).model.source.startswith("/head/")  # the claimed task itself is untouched
    twin = replace(work, model=replace(model, source="builtin:text-to-image"))
    builtin = {"kind": "keyframe", "params": twin.to_json()}
    assert _on_this_node(builtin) is builtin


@needs_ray
@pytest.mark.slow  # its actor side is tested in the default suite (a hub model found, or missing, on a node)
def test_a_node_without_the_model_gives_its_task_to_one_that_has_it(ray_local, built_models, write_spec, cli,
                                                                   tmp_path, monkeypatch, capsys):
    import shutil

    (home,) = homes(built_models, tmp_path, "ray")
    monkeypatch.setenv("FARM_HOME", str(home))
    head_hub, commit = tmp_path / "head-hub", "c0ffee" * 6 + "beef"
    for repo in ("studio--tiny", "studio--gone"):  # two "hub" models (the tiny one's files) the head plans with
        shutil.copytree(built_models / "text-to-image-recipe1", head_hub / f"models--{repo}" / "snapshots" / commit)
        (head_hub / f"models--{repo}" / "refs").mkdir()
        (head_hub / f"models--{repo}" / "refs" / "main").write_text(commit)
    monkeypatch.setenv("HF_HUB_CACHE", str(head_hub))
    three = ONE_FRAME.replace('[[frames]]\nprompt = "a boat"\nseconds = 0.5\n',
                              "".join(f'[[frames]]\nprompt = "boat {i}"\nseconds = 0.5\n' for i in range(3)))
    code, out, err = cli("submit", write_spec(three.format(name="here", seed=1, model="studio/tiny"), "here.toml"),
                         write_spec(ONE_FRAME.format(name="gone", seed=1, model="studio/gone"), "gone.toml"), "--json")
    assert code == 0, err
    here, gone = (json.loads(line)["job"] for line in out.splitlines())
    # node 1 has studio/tiny in its own cache; node 0 has nothing; nobody has studio/gone any more
    node1 = tmp_path / "node1-hub"
    head_hub.rename(node1)
    shutil.rmtree(node1 / "models--studio--gone")
    envs = [{"FARM_HOME": str(home), "HF_HUB_CACHE": str(tmp_path / f"node{i}-hub")} for i in range(2)]
    driver = driver_for(home, env=envs)
    assert driver.run() == 0
    err = capsys.readouterr().err
    conn = sqlite3.connect(home / "queue.db")
    assert conn.execute("SELECT state FROM jobs WHERE id = ?", (here,)).fetchone() == ("done",)
    workers = {w for (w,) in conn.execute("SELECT worker FROM tasks WHERE job_id = ? AND kind = 'keyframe'",
                                          (here,))}
    assert workers == {driver.slots[1].name}  # the actor whose node has it drew every keyframe
    attempts = [a for (a,) in conn.execute("SELECT attempts FROM tasks WHERE job_id = ?", (here,))]
    assert attempts == [1] * len(attempts)  # giving a task back spent no attempt
    bad = [e for (e,) in conn.execute("SELECT event FROM events WHERE job_id = ? AND event IN "
                                      "('task.retry', 'task.failed')", (here,))]
    assert bad == []
    assert err.count("'studio/tiny' is not on node") == 1  # said once
    state, error = conn.execute("SELECT state, error FROM jobs WHERE id = ?", (gone,)).fetchone()
    assert state == "failed" and "'studio/gone' is not on node" in error and "no other node" in error


def running_on(db, node, kind):
    """The name of a task of this kind running on an actor of Ray node `node`, else None."""
    try:
        conn = sqlite3.connect(db)
        row = conn.execute("SELECT t.name FROM workers w JOIN tasks t ON t.lease_owner = w.name "
                           "WHERE w.node = ? AND t.state = 'running' AND t.kind = ?", (node, kind)).fetchone()
        conn.close()
        return row and row[0]
    except sqlite3.OperationalError:
        return None


@needs_ray
def test_a_node_lost_mid_job_does_not_keep_until_empty_from_ending(built_models, write_spec, cli, tmp_path,
                                                                    monkeypatch, hold):
    """Two nodes of one CPU each (Ray's own simulated cluster), an actor on each; the second
    node removed while its actor runs a task. The task runs again on the head's actor, the job
    is published, and `--until-empty` ends: the actor that Ray cannot place again anywhere is
    not waited for. Nothing of Ray's own logs reaches farm's output."""
    from ray.cluster_utils import Cluster

    path = write_spec(SMALL)
    held = hold("segment")  # a segment is still running when its node goes (the driver passes it to its actors)
    (home,) = homes(built_models, tmp_path, "ray")
    monkeypatch.setenv("FARM_HOME", str(home))
    code, out, err = cli("submit", path, "--json")
    assert code == 0, err
    job = json.loads(out)["job"]
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False, **LOOPBACK})
    proc = None
    try:
        second = cluster.add_node(num_cpus=1, **LOOPBACK)
        env = {k: v for k, v in held.env().items() if k not in ("RAY_ADDRESS", "FARM_DEBUG")}
        env["FARM_TORCH_THREADS"] = "1"  # two actors on two cores
        proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "work", "--ray", cluster.address, "--cpu",
                                 "--workers", "2", "--until-empty"],  # leases of 60 s
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        db = home / "queue.db"
        lost = wait_for(lambda: running_on(db, second.node_id, "segment"), timeout=180, proc=proc)
        cluster.remove_node(second, allow_graceful=False)  # the node is lost, as a machine that goes away
        removed = time.time()
        held.release()
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError("farm work --until-empty did not end after its node was lost:\n"
                                 f"{err[-3000:]}") from None
    finally:
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        cluster.shutdown()
    assert proc.returncode == 0, err
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone() == ("done",)
    events = [e for (e,) in conn.execute("SELECT e.event FROM events e JOIN tasks t ON t.id = e.task_id "
                                         "WHERE t.job_id = ? AND t.name = ? ORDER BY e.id", (job, lost))]
    assert events[:3] == ["task.started", "task.lease_expired", "task.started"] and events[-1] == "task.done"
    expired = conn.execute("SELECT e.ts FROM events e JOIN tasks t ON t.id = e.task_id WHERE t.job_id = ? AND "
                           "t.name = ? AND e.event = 'task.lease_expired'", (job, lost)).fetchone()[0]
    assert expired - removed < 30  # given back once Ray said the actor died: not a 60-s lease later
    assert (path.parent / "out" / "small.mp4").stat().st_size > 0
    assert conn.execute("SELECT count(*) FROM workers").fetchone()[0] == 0  # every actor unregistered on exit
    # farm's own lines only: its messages and its progress lines, none of Ray's logs ([state-dump], (raylet) ...)
    assert out == ""
    foreign = [line for line in err.splitlines() if line and not line.startswith(("farm: ", "[ray:"))]
    assert foreign == [], "\n".join(foreign[:20])


def ray_local_cli(home):
    """`farm work --ray local --cpu --workers 2` started in its own process (its environment
    without the tests' Ray settings: farm's own apply), once its two actors are workers:
    (process, `farm status --json` then)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER")}
    env["FARM_HOME"] = str(home)
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "work", "--ray", "local", "--cpu", "--workers", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)

    def two_workers():
        out = subprocess.run([sys.executable, "-m", "farm.cli", "status", "--json"], capture_output=True, text=True,
                             env=env).stdout
        status = json.loads(out) if out else {"workers": []}
        return len(status["workers"]) == 2 and status

    try:
        return proc, wait_for(two_workers, timeout=180, proc=proc)
    except BaseException:
        proc.kill()
        proc.wait()
        raise


def is_loopback(ip):
    import ipaddress

    address = ipaddress.ip_address(ip)
    return (getattr(address, "ipv4_mapped", None) or address).is_loopback


@needs_ray
def test_farm_work_ray_local_renders_the_same_video_on_the_loopback_and_leaves_no_process(
        built_models, write_spec, cli, tmp_path, monkeypatch):
    """One Ray started by `farm work --ray local` (each start costs seconds of the suite): its
    actors draw a submitted job to the video `farm render` makes in-process, byte for byte; it
    listens on the loopback only; and once its driver is SIGKILLed its actors show as lost at
    once and none of its processes stays."""
    import psutil

    path = write_spec(SMALL)
    clean, home, job = reference_then_submit(cli, path, built_models, tmp_path, monkeypatch)
    proc, status = ray_local_cli(home)  # FARM_TORCH_THREADS (conftest) gives its actors the reference's threads
    assert [w["state"] for w in status["workers"]] == ["working", "working"]
    db = home / "queue.db"
    wait_for(lambda: sqlite3.connect(db).execute("SELECT state IN ('done', 'failed', 'canceled') AND (state != "
                                                 "'done' OR published IS NOT NULL) FROM jobs WHERE id = ?",
                                                 (job,)).fetchone()[0], timeout=300, proc=proc)
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT state, published FROM jobs WHERE id = ?", (job,)).fetchone() == ("done", "published")
    assert sha(path.parent / "out" / "small.mp4") == clean
    runners = {w for (w,) in conn.execute("SELECT DISTINCT worker FROM tasks WHERE job_id = ?", (job,))}
    assert runners and all(w.startswith("ray:") for w in runners)
    started = [json.loads(d) for (d,) in conn.execute("SELECT data FROM events WHERE event = 'worker.started'")]
    assert len({s["pid"] for s in started}) == 2 and all(s["node"] for s in started)  # the actors' own processes
    ray = psutil.Process(proc.pid).children(recursive=True)  # the GCS, the raylet, its agents, the actors...
    listening = set()
    for p in ray:
        try:
            listening |= {c.laddr.ip for c in p.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
        except psutil.Error:
            pass
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    # at once, not when their heartbeats are a lease (60 s) old
    states = [w["state"] for w in json.loads(cli("status", "--json")[1])["workers"]]
    text = cli("status")[1]

    def left():
        running = []
        for p in ray:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    running.append(p)
            except psutil.Error:
                pass
        return running

    try:
        wait_for(lambda: not left(), timeout=30)  # Ray's agents lived 60 s on; ours go at once (30: a loaded machine)
    except AssertionError:
        pass
    stayed = [(p.pid, p.name()) for p in left()]
    for p in left():  # leave nothing behind on this machine either way
        p.kill()
    assert listening  # the GCS, the raylet, the agents...
    assert all(is_loopback(ip) for ip in listening), listening  # not 0.0.0.0, ::, nor the machine's address
    assert states == ["lost", "lost"] and text.count("lost") == 2, text
    assert stayed == []
    # the driver published every output into the head's cache: a second render is all hits, drawn
    # at once, not deferred to the dead actors until their rows' leases (60 s) run out
    began = time.time()
    code, out, err = cli("render", path, "--json", "-q")
    assert code == 0 and json.loads(out)["tasks"]["run"] == 0
    assert time.time() - began < 30
