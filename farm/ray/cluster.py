"""`farm work --ray`: the same queue drained by Ray actors, one per GPU, across machines.

The head keeps the truth. This driver is the only process that opens the SQLite queue and
writes the content-addressed cache; actors hold warm pipelines and nothing durable. The driver
claims tasks on behalf of each actor with the queue's own `claim` (the scheduling rule and
`choose()`, with affinity to the models that actor reports), keeps at most DEPTH tasks in
flight per actor (`ray.wait`), sends each task's inputs (keyframe PNGs, a picture) to its actor
as bytes through Ray's object store, and publishes the bytes that come back into the cache. No
filesystem is shared: a `FARM_HOME` on NFS is not read by actors even where it exists.

On the head, not on an actor: cache hits (answered as `farm work` answers them, without a
model), and assembly (ffmpeg, in a thread): its input is every frame of the video, already in
the head's cache, so an actor would receive the largest data of the job and send the video
back, for CPU work.

Faults. The driver renews the leases of the tasks in flight. When an actor dies (its process
killed, its node lost) Ray tells the driver, which ends its tasks' leases at once (`Queue.lost`):
the queue puts the tasks back (`task.lease_expired`, then a second `task.started`), as it does
for a killed local worker. Ray restarts the actor (`max_restarts`), which loads its models again
on first use; more than MAX_RESTARTS deaths of one actor in a minute and it is let go
(`supervisor.Restarts`, the limit local workers have). The driver dying gives its actors' tasks
back at the next claim on its host (its pid is gone: `queue.gone`), or when their leases run out
elsewhere; starting it again resumes.
"""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import FarmError
from ..models import pipeline
from ..plan import tasks
from ..queue.cache import Cache
from ..queue.queue import Queue
from ..run.publish import finish
from ..run.runner import Runner
from ..run.supervisor import Restarts, torch_threads
from ..run.worker import Worker

DEPTH = 2  # tasks in flight per actor: one running, the next waiting there with its inputs sent
START_TIMEOUT = 600.0  # seconds to wait for the actors to start (a GPU node may be slow to join)


class ModelMissing(FarmError):
    """A task's model is not on the actor's node: another node may have it, so it is retried."""

    retry = True


def connect(address: str, *, cpus: int | None = None):
    """Import Ray and connect: `local` starts a Ray instance on this machine, `auto` joins the
    cluster this machine is part of (`ray start`), anything else is a cluster address. End
    with `disconnect()`.

    A Ray of this machine's own (`local`, or an address on the loopback) listens on 127.0.0.1
    only. Ray's own logs (its raylets' `[state-dump]`s, its workers' output) stay in its log
    folder (/tmp/ray/session_latest/logs) unless FARM_DEBUG is set."""
    global _watcher
    loopback = address == "local" or _is_loopback(address)
    if loopback and "ray" not in sys.modules:
        # Ray's switch for a node that is not part of a cluster (its default on macOS and
        # Windows): its node IP address is 127.0.0.1 and its servers listen there. On Linux,
        # ray.init rewrites `_node_ip_address="127.0.0.1"` to the machine's network address
        # (192.0.2.2 here, with the GCS and raylet listening on every interface), and a cluster
        # started on 127.0.0.1 cannot be joined. Read once, when Ray is imported.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise FarmError("`farm work --ray` needs Ray, an optional extra: pip install 'farm[ray]' (on the head "
                        "and on every worker node).", code=2) from None
    if ray.is_initialized():
        return ray
    debug = bool(os.environ.get("FARM_DEBUG"))
    logs = {"log_to_driver": debug, "logging_level": "INFO" if debug else "ERROR"}
    try:
        if address == "local":
            ray.init(num_cpus=cpus, include_dashboard=False, **logs)
        else:
            ray.init(address=address, **logs)
    except Exception as e:  # noqa: BLE001 - ConnectionError, ValueError...: all mean "no cluster there"
        raise FarmError(f"Could not connect to the Ray cluster at {address!r}: {e}. Start one with "
                        f"`ray start --head` (see docs/ray.md), or use --ray local.", code=2) from None
    if address == "local":
        _watcher = _watch()
    if not debug:
        # log_to_driver=False keeps the workers' and raylets' logs out, but not what Ray publishes
        # to every driver, which it prints on stdout whatever log_to_driver says: a lost node's
        # agent published "(raylet) Raylet is terminated ... Last 20 lines of the Raylet logs:
        # [state-dump] ..." into `farm work`'s output (issue 18). Ray has no public switch for
        # it; this is the one its own debugger (ray.util.rpdb) turns off while a breakpoint is
        # open. The message stays in Ray's logs (raylet.out).
        ray._private.worker._worker_logs_enabled = False
    return ray


def disconnect():
    """Leave Ray; a Ray started by `connect("local")` ends with every process it started."""
    global _watcher
    import ray

    ray.shutdown()
    if _watcher is not None:
        _watcher.stdin.close()  # what ray.shutdown left running, the watcher ends now
        _watcher.wait(timeout=10)
        _watcher = None


def _is_loopback(address: str) -> bool:
    import ipaddress

    host = address.rpartition(":")[0].strip("[]")
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# A local Ray's daemons get the kernel's parent-death signal from ray.init (Ray's fate sharing),
# but the raylet's own children do not: after a SIGKILL of the driver, its dashboard agent and
# runtime-env agent (about 170 MB together) lived on for 60 s, reporting the raylet's death to a
# GCS already gone with a 60-s timeout. A watcher of ours, in a session of its own (a Ctrl-C at
# the terminal is not for it), is given the processes Ray started and kills those still running
# when this process's end of its pipe closes: on any exit of the driver, SIGKILL included.
# Processes are told apart by their start time (/proc/PID/stat field 22, read by the watcher as it
# starts), not by a pid that may be reused.
WATCHER = """
import os, signal, sys
def started(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None
ours = [(int(pid), started(pid)) for pid in sys.argv[1:]]
sys.stdin.buffer.read()
for pid, start in ours:
    if start is not None and started(pid) == start:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
"""
_watcher = None


def _watch():
    """Start the watcher over every process this one has started so far (Ray's, after ray.init)."""
    import subprocess

    import psutil  # Ray's own (vendored in ray/thirdparty_files, on the path once ray is imported)

    ours = [str(p.pid) for p in psutil.Process().children(recursive=True)]
    return subprocess.Popen([sys.executable, "-c", WATCHER, *ours], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


# --- the actor: one GPU (or CPU) of the cluster ---------------------------------------------


class Actor:
    """A farm Runner on one GPU (its loaded pipelines and the task handlers, no queue), running
    tasks on inputs sent as bytes. Wrapped with `ray.remote` by `Driver`."""

    def __init__(self, name: str, env: dict, threads: int | None, memory: int | None):
        os.environ.update(env)
        from ..quiet import quiet_libraries

        quiet_libraries()
        if threads:
            import torch

            torch.set_num_threads(threads)
        scratch = Path(tempfile.mkdtemp(prefix="farm-actor-"))  # inputs and outputs, only while a task runs
        self.name = name
        self.runner = Runner(Cache(scratch), memory_budget=memory)

    def info(self) -> dict:
        import ray

        gpus = ray.get_gpu_ids()
        return {"pid": os.getpid(), "host": socket.gethostname(), "node": ray.get_runtime_context().get_node_id(),
                "device": f"cuda:{gpus[0]}" if gpus else "cpu", "models": sorted(self.runner.held())}

    def run(self, task: dict, inputs: dict) -> dict:
        """Run one task; its output files as bytes, or its failure as the runner classifies it."""
        started = time.perf_counter()
        out = {}
        try:
            out["files"] = self.runner.produce(_on_this_node(task), inputs)
        except ModelMissing as e:  # said once by the driver, which gives the task to another actor
            out["error"], out["missing"] = e.message, task["model"]
        except Exception as e:  # noqa: BLE001 - reported to the driver, which records it in the queue
            out["error"], out["retry"] = self.runner.failure(task, e)
        return {**out, "seconds": time.perf_counter() - started, "models": sorted(self.runner.held()),
                "calls": dict(self.runner.calls)}


def _on_this_node(task: dict) -> dict:
    """The task with its model's source as found on this node: a hub model in this node's
    Hugging Face cache (at the commit the head planned with), a folder at the same path, or
    a built-in twin (built here on first use)."""
    work = tasks.of(task)
    model = work.model
    if model is None or model.source.startswith("builtin:") or Path(model.source).exists():
        return task
    from .. import models

    if model.identity.startswith("hub:"):
        repo, commit = model.identity[4:].rsplit("@", 1)
        found = Path(models.hub_cache()) / f"models--{repo.replace('/', '--')}" / "snapshots" / commit
        if found.is_dir():
            return {**task, "params": replace(work, model=replace(model, source=str(found))).to_json()}
        fix = f"run `farm models pull {model.name}` there, or share HF_HOME"
    else:
        fix = "put the model at the same path on every node"
    raise ModelMissing(f"model {model.name!r} is not on node {socket.gethostname()} ({model.source}): {fix}")


# --- the driver -----------------------------------------------------------------------------


@dataclass(eq=False)
class Slot:
    """An actor as the queue sees it: a worker named `name` (stable across restarts)."""
    index: int
    name: str
    actor: object
    device: str = "?"
    node: str | None = None
    pid: int | None = None
    host: str | None = None
    models: frozenset = frozenset()
    calls: dict = field(default_factory=dict)
    flight: dict = field(default_factory=dict)  # object ref -> (task, started)
    probe: object = None  # info() while the actor starts or restarts
    retry_at: float | None = None  # when to ask a restarting actor again
    lacks: dict = field(default_factory=dict)  # model identity -> why: models its node does not have
    idle: bool = False  # gave back a task of a model it lacks: claims again once another actor reports
    alive: bool = False
    restarts: Restarts = field(default_factory=Restarts)  # deaths in the last minute: restart or let go


class Driver:
    """Claims for, feeds and collects from `actors` Ray actors until stopped (or, with
    until_empty, until the queue is drained); see the module docstring. `env` is set in each
    actor's environment (a list: one per actor, as nodes have their own `HF_HOME`)."""

    def __init__(self, queue: Queue, cache: Cache, *, actors: int, gpu: bool, lease: float = 60.0,
                 memory: int | None = None, env: dict | list[dict] | None = None, threads: int | None = None,
                 until_empty: bool = True, grace: float = 30.0, progress: bool = False, poll: float = 0.2):
        import ray

        self.ray = ray
        self.queue, self.cache = queue, cache
        self.lease, self.until_empty, self.grace, self.progress, self.poll = lease, until_empty, grace, progress, poll
        self.stopping = False  # first signal: claim no more; finish (or after grace, release) what is in flight
        self.abort = False  # second signal: release at once
        self.lock = threading.Lock()  # slots' flight, shared with the heartbeat thread
        self.head: dict = {}  # future -> (slot, task): assemblies running on the head
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="farm-assemble")
        self.said: set = set()  # (node, message) lines printed once
        remote = ray.remote(Actor).options(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1,
                                           max_restarts=-1, max_task_retries=0)
        tag = f"ray:{socket.gethostname()}:{os.getpid()}"
        self.slots = []
        for i in range(actors):
            name = f"{tag}:{i}"
            actor = remote.remote(name, (env[i] if isinstance(env, list) else env) or {}, threads, memory)
            self.slots.append(Slot(i, name, actor, probe=actor.info.remote()))
        self._beat_stop = threading.Event()
        self._beat = None

    # --- life cycle ---------------------------------------------------------------------

    def run(self) -> int:
        """Drain; return the exit code (0, or 130 when aborted by a second signal)."""
        ray = self.ray
        probes = [s.probe for s in self.slots]
        ready, _ = ray.wait(probes, num_returns=len(probes), timeout=START_TIMEOUT)
        for ref in ready:  # claims start once the actors are up (those still starting join later)
            self._collect(ref)
        if not any(s.alive for s in self.slots) and not any(s.probe for s in self.slots):
            raise FarmError("No Ray actor could start: see the Ray logs (`ray status`, /tmp/ray/session_latest).")
        self._beat = threading.Thread(target=self._heartbeat, name="farm-ray-heartbeat", daemon=True)
        self._beat.start()
        deadline = None
        try:
            while True:
                if not self.stopping:
                    self._fill()
                elif deadline is None:
                    deadline = time.time() + self.grace
                self._reap_head()
                for slot in self.slots:
                    if slot.retry_at is not None and time.time() >= slot.retry_at:
                        slot.retry_at, slot.probe = None, slot.actor.info.remote()
                flights = [r for s in self.slots for r in s.flight]
                # Work in hand is tasks in flight and assemblies; an actor starting or restarting is
                # not: one whose node was lost may never be placed again (its probe waits forever,
                # 400 s and counting in issue 18), and a drained queue must still end --until-empty.
                busy = bool(flights) or bool(self.head)
                if self.abort or (self.stopping and (not busy or time.time() >= deadline)):
                    break
                if not any(s.alive or s.probe or s.retry_at for s in self.slots):
                    raise FarmError("Every Ray actor died repeatedly; stopping. Their tasks are back in the queue "
                                    "for the next `farm work`.")
                if not busy and not self.stopping and self.until_empty and self.queue.pending() == 0:
                    break
                refs = flights + [s.probe for s in self.slots if s.probe]
                if refs:  # a result, or an actor (re)started; at most a poll's wait when idle
                    ready, _ = ray.wait(refs, num_returns=1, timeout=0.05 if self.head else self.poll)
                    for ref in ready:
                        self._collect(ref)
                else:
                    time.sleep(0.05 if self.head else self.poll)
        finally:
            self._shutdown()
        return 130 if self.abort else 0

    def _shutdown(self):
        """Give back what is still in flight (not a failure), say the actors stopped, end them."""
        for slot in self.slots:
            with self.lock:
                lost = [t for t, _ in slot.flight.values()]
                slot.flight.clear()
            for task in lost:
                self.queue.release(task, slot.name)
        self.pool.shutdown(wait=not self.abort)
        self._reap_head()
        self._beat_stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        for slot in self.slots:
            if slot.pid is not None:
                self.queue.unregister(slot.name)
            self.ray.kill(slot.actor, no_restart=True)

    def _heartbeat(self):
        """Say every live actor is alive and renew the leases of its tasks in flight, every
        third of a lease, on a connection of its own. A dead actor's tasks are not renewed."""
        queue = Queue(self.queue.path)
        try:
            while not self._beat_stop.wait(max(self.lease / 3, 0.05)):
                with self.lock:  # an assembly on the head is renewed even while its claiming actor restarts
                    beats = [(s.name, sorted(s.models), [t for t, _ in s.flight.values()]
                              + [t for (owner, t) in self.head.values() if owner is s])
                             for s in self.slots if s.alive or any(owner is s for owner, _ in self.head.values())]
                state = "stopping" if self.stopping else None
                for name, held, tasks in beats:
                    queue.heartbeat(name, models=held, state=state)
                    for task in tasks:
                        queue.heartbeat(name, models=held, task=task, lease=self.lease, state=state)
        finally:
            queue.close()

    # --- claiming and sending -------------------------------------------------------------

    def _fill(self):
        """Claim for each live actor until it has DEPTH tasks in flight: first one each, so an
        idle actor is fed before a busy one gets its second."""
        if not self.head and not any(s.flight for s in self.slots):  # no result will come to wake them
            for slot in self.slots:
                slot.idle = False
        for depth in range(1, DEPTH + 1):
            for slot in self.slots:
                while slot.alive and not slot.idle and len(slot.flight) < depth:
                    coming = {t["model"] for t, _ in slot.flight.values() if t["model"]}  # warm by the time it runs
                    task = self.queue.claim(slot.name, lease=self.lease, device=slot.device,
                                            models=slot.models | coming)
                    if task is None:
                        break
                    if task["model"] in slot.lacks:
                        self._missing(slot, task, task["model"], slot.lacks[task["model"]])
                        break
                    self._dispatch(slot, task)

    def _dispatch(self, slot: Slot, task: dict):
        if task["kind"] == "assemble":
            with self.lock:
                self.head[self.pool.submit(self._assemble, slot.name, task)] = (slot, task)
            return
        try:
            if self._worker(slot.name).cached(task):  # as a local worker answers it: no model, no actor
                self._done(slot, task, cached=True, seconds=0.0)
                return
            inputs = self._inputs(task)
        except (OSError, FarmError) as e:  # a picture gone, or no longer a regular file
            self.queue.fail(task, slot.name, *self._failure(task, e))
            return
        ref = slot.actor.run.remote(task, inputs)
        with self.lock:
            slot.flight[ref] = (task, time.perf_counter())

    def _inputs(self, task: dict) -> dict:
        """What the actor needs from the head, as bytes: the cache entries of the tasks it reads,
        and a picture keyframe's picture."""
        work = tasks.of(task)
        if isinstance(work, tasks.Keyframe):
            if work.image is None:
                return {}
            from .. import files
            from ..checks import MAX_PICTURE_BYTES

            return {"image": {"image": files.read_regular(work.image, MAX_PICTURE_BYTES, "a keyframe picture")}}
        keys = self.queue.needs(task["id"])  # keyframes, and a chain's clips: whatever it depends on
        return {k: {f.name: f.read_bytes() for f in self.cache.files(k)} for k in keys}

    def _worker(self, name: str, queue: Queue | None = None) -> Worker:
        """A local worker's code on the head, acting for the actor `name` (cache hits and
        assembly)."""
        return Worker(queue or self.queue, Runner(self.cache, device="cpu"), name=name, label="head")

    def _failure(self, task, e) -> tuple[str, bool]:
        return Runner(self.cache, device="cpu").failure(task, e)

    def _assemble(self, slot: str, task: dict) -> bool | None:
        """On the head, in a thread: a local worker's own execution under the claiming actor's
        name, then (only when the queue accepts the completion) publishing the job."""
        queue = Queue(self.queue.path)
        try:
            worker = self._worker(slot, queue)
            started = time.perf_counter()
            outcome = worker.execute(task)
            if outcome not in ("cached", "run"):
                return None
            if not queue.complete(task, slot, cached=outcome == "cached", seconds=time.perf_counter() - started):
                return None
            finish(queue, self.cache, task["job_id"], slot)
            return outcome == "cached"
        finally:
            queue.close()

    def _reap_head(self):
        for future in [f for f in list(self.head) if f.done()]:
            with self.lock:
                slot, task = self.head.pop(future)
            try:
                cached = future.result()
            except Exception as e:  # noqa: BLE001 - a bug, not the task's failure: the lease will run out
                print(f"farm: assembling job {task['job_id']} on the head failed: {type(e).__name__}: {e}",
                      file=sys.stderr)
                continue
            self._show(slot, task, cached)

    # --- collecting -----------------------------------------------------------------------

    def _collect(self, ref):
        ray = self.ray
        slot = next((s for s in self.slots if s.probe == ref), None)
        if slot is not None:
            self._started(slot)
            return
        slot = next(s for s in self.slots if ref in s.flight)
        with self.lock:
            task, _ = slot.flight.pop(ref)
        try:
            out = ray.get(ref)
        except (ray.exceptions.RayActorError, getattr(ray.exceptions, "ActorUnavailableError", ())) as e:
            self._died(slot, e)
            return
        except ray.exceptions.RayError as e:  # the call itself failed (arguments, serialization): retry it
            self.queue.fail(task, slot.name, f"{type(e).__name__}: {str(e).strip().splitlines()[-1]}")
            self._show(slot, task, None)
            return
        slot.models, slot.calls = frozenset(out["models"]), out["calls"]
        for other in self.slots:  # something changed: an actor that gave a task back may claim again
            other.idle = other.idle and other is slot
        if "missing" in out:
            self._missing(slot, task, out["missing"], out["error"])
            return
        if "error" in out:
            self.queue.fail(task, slot.name, out["error"], retry=out["retry"])
            self._show(slot, task, None)
            return
        try:
            with self.cache.writing(task["key"]) as folder:  # published whole, or not at all
                for name, data in out["files"].items():
                    (folder / name).write_bytes(data)
        except OSError as e:
            self.queue.fail(task, slot.name, *self._failure(task, e))
            return
        self._done(slot, task, cached=False, seconds=out["seconds"])

    def _done(self, slot: Slot, task: dict, *, cached: bool, seconds: float):
        accepted = self.queue.complete(task, slot.name, cached=cached, seconds=seconds)
        self._show(slot, task, cached if accepted else None)  # not accepted: its lease went to another attempt

    def _missing(self, slot: Slot, task: dict, model: str, error: str):
        """The actor's node lacks the task's model: say so once and give the task back (not a
        failure) for an actor that has it; when every live actor lacks it, fail it with the reason."""
        self._say_once(slot, error)
        slot.lacks[model] = error
        if all(model in s.lacks for s in self.slots if s.alive):
            self.queue.fail(task, slot.name, f"{error} (and no other node of the cluster has it)", retry=False)
            self._show(slot, task, None)
        else:
            self.queue.release(task, slot.name)
            slot.idle = True

    def _started(self, slot: Slot):
        """An actor answered its first call (started, or restarted after dying): it is a worker."""
        ray = self.ray
        ref, slot.probe = slot.probe, None
        try:
            info = ray.get(ref)
        except getattr(ray.exceptions, "ActorUnavailableError", ()):  # still restarting: ask again shortly
            slot.retry_at = time.time() + 0.5
            return
        except ray.exceptions.RayError as e:
            self._say_once(slot, f"Ray actor {slot.name} could not start: {e}")
            return
        if info["node"] != slot.node:  # restarted elsewhere: what it lacked there says nothing here
            slot.lacks = {}
        slot.pid, slot.host, slot.node, slot.device = info["pid"], info["host"], info["node"], info["device"]
        slot.models, slot.alive = frozenset(info["models"]), True
        for other in self.slots:
            other.idle = False
        self.queue.register(slot.name, device=slot.device, lease=self.lease, pid=slot.pid, host=slot.host,
                            node=slot.node)

    def _died(self, slot: Slot, e: Exception):
        """Its tasks in flight go back to the queue now (`Queue.lost`: the driver knows, where
        the queue could only wait for their leases on a node elsewhere); Ray restarts the actor
        unless it keeps dying."""
        with self.lock:
            lost = len(slot.flight)
            slot.flight.clear()
            slot.alive, slot.models = False, frozenset()
        self.queue.lost(slot.name)
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not slot.restarts.died():
            print(f"farm: Ray actor {slot.name} died {slot.restarts.recent} times in a minute; not restarting it.",
                  file=sys.stderr)
            self.ray.kill(slot.actor, no_restart=True)
            self.queue.unregister(slot.name)
            slot.pid = None
            return
        print(f"farm: Ray actor {slot.name} on node {(slot.node or '?')[:12]} died ({why}); its {lost + 1} task(s) "
              f"went back to the queue; Ray restarts it.", file=sys.stderr)
        slot.probe = slot.actor.info.remote()

    def _say_once(self, slot: Slot, message: str):
        if (slot.node, message) not in self.said:
            self.said.add((slot.node, message))
            print(f"farm: {message}", file=sys.stderr)

    def _show(self, slot: Slot, task: dict, cached: bool | None):
        if self.progress:
            what = "failed" if cached is None else "cached" if cached else "done"
            print(f"[{slot.name} {slot.device}@{(slot.node or '?')[:8]}] job {task['job_id']} {task['name']} {what}",
                  file=sys.stderr, flush=True)

    def calls(self) -> dict[str, dict]:
        """Each actor's call counts (loads, keyframes, segments) as of its last result."""
        return {s.name: dict(s.calls) for s in self.slots}


def work(address: str, *, cpu: bool, workers: int, db: str | None, lease: float, until_empty: bool, grace: float,
         memory: int | None, progress: bool) -> int:
    """`farm work --ray ADDRESS`: one actor per GPU in the cluster, or `workers` CPU actors with
    --cpu (or when the cluster has no GPU)."""
    import signal

    from .. import home

    ray = connect(address, cpus=max(os.cpu_count() or 1, workers) if cpu or address == "local" else None)
    gpus = 0 if cpu else int(ray.cluster_resources().get("GPU", 0))
    actors = gpus or workers
    env = {"FARM_HOME": str(home.home())} if address == "local" else {}  # this machine's, for its own actors
    # The test hook (farm/models/pipeline.py: `hold`) reaches actors on every node, as it reaches `farm work`'s workers.
    env |= {k: os.environ[k] for k in (pipeline.HOLD, pipeline.HOLD_TASKS) if k in os.environ}
    threads = torch_threads(None if gpus else actors)  # CPU actors share the head's cores, as local workers do
    if progress:
        nodes = len([n for n in ray.nodes() if n.get("Alive")])
        print(f"farm: Ray cluster of {nodes} node(s): {actors} {'GPU' if gpus else 'CPU'} actor(s)", file=sys.stderr)
    driver = Driver(Queue(db or home.db_path()), Cache(home.cache_dir()), actors=actors, gpu=bool(gpus),
                    lease=lease, memory=memory, env=env, threads=threads, until_empty=until_empty, grace=grace,
                    progress=progress)

    def on_signal(signum, _frame):
        if driver.stopping:
            driver.abort = True
        driver.stopping = True

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return driver.run()
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if address == "local":
            disconnect()
