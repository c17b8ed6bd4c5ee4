"""`farm work`: one worker process per GPU (or N CPU workers) draining the shared queue.

The supervisor starts each worker in a fresh process (spawn: no CUDA state is inherited)
with `CUDA_VISIBLE_DEVICES` set to its GPU, in its own process group so that a terminal's
Ctrl-C reaches the supervisor once and is forwarded once. It restarts a worker that dies
unexpectedly (a crashed driver, the OOM killer), at most MAX_RESTARTS times a minute (`Restarts`,
which `farm work --ray` applies to its actors too).

Stopping: the first SIGINT/SIGTERM makes every worker stop claiming; a worker finishes its
task in flight, or after `grace` seconds releases it back to the queue, then exits, and
the supervisor exits 0. A second signal makes workers release their task at once (exit
130). A worker killed outright (SIGKILL, the OOM killer) holds its task no longer: the queue
gives it back at the next claim, its pid being gone from this host (`queue.gone`).
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass

from ..errors import FarmError

MAX_RESTARTS = 5  # per worker per minute


class Restarts:
    """The restart limit of one worker, a local process or a Ray actor: at most `limit` deaths
    in any `window` seconds are followed by a restart. A worker that keeps dying (a driver that
    crashes at start, a model that cannot load) is let go instead of restarted in a loop."""

    def __init__(self, limit: int = MAX_RESTARTS, window: float = 60.0, clock=time.monotonic):
        self.limit, self.window, self.clock = limit, window, clock
        self.deaths: list[float] = []  # within the last window

    def died(self) -> bool:
        """Record a death now; True if the worker may be restarted."""
        now = self.clock()
        self.deaths = [t for t in self.deaths if now - t < self.window] + [now]
        return len(self.deaths) <= self.limit

    @property
    def recent(self) -> int:
        """Deaths within the last window, as of the last one recorded."""
        return len(self.deaths)


@dataclass(frozen=True)
class Slot:
    index: int
    device: str  # "cuda:3" or "cpu"
    env: dict


def torch_threads(sharing: int | None) -> int | None:
    """Torch threads for each of `sharing` CPU workers (local workers or Ray actors): the
    machine's cores shared among them, unless FARM_TORCH_THREADS says; None (torch's own) for
    GPU workers it does not name. On the CPU, torch sums in another order with another thread
    count, and pixels move: set it when two machines must draw the same frames."""
    if os.environ.get("FARM_TORCH_THREADS"):
        return int(os.environ["FARM_TORCH_THREADS"])
    return max(1, (os.cpu_count() or 1) // sharing) if sharing else None


def slots(gpus: str | None, cpu: bool, workers: int) -> list[Slot]:
    """Which workers to start: `--gpus all|0,1`, or `--cpu --workers N`."""
    if cpu:
        if gpus:
            raise FarmError("Give either --cpu or --gpus, not both.", code=2)
        threads = torch_threads(workers)
        return [Slot(i, "cpu", {"CUDA_VISIBLE_DEVICES": "", "FARM_TORCH_THREADS": str(threads)})
                for i in range(workers)]
    found = _gpu_count()
    if gpus in (None, "all"):
        if found == 0:
            if gpus == "all":
                raise FarmError("--gpus all: no CUDA GPU is visible here. Use --cpu --workers N.", code=2)
            return slots(None, True, workers)
        ids = list(range(found))
    else:
        try:
            ids = [int(x) for x in gpus.split(",") if x.strip()]
        except ValueError:
            raise FarmError(f"--gpus expects `all` or GPU indices like 0,1; got {gpus!r}.", code=2) from None
        bad = [i for i in ids if i < 0 or i >= found]
        if found == 0:
            raise FarmError(f"--gpus {gpus}: no CUDA GPU is visible here. Use --cpu --workers N.", code=2)
        if bad or not ids:
            raise FarmError(f"--gpus {gpus}: this machine has {found} GPU(s) (indices 0..{found - 1}).", code=2)
    return [Slot(n, f"cuda:{i}", {"CUDA_VISIBLE_DEVICES": str(i)}) for n, i in enumerate(ids)]


def _gpu_count() -> int:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and not visible.strip():
        return 0
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001 - no usable CUDA is the same as no GPU
        return 0


def work(slots_: list[Slot], *, db: str | None, lease: float, until_empty: bool, grace: float,
         memory: int | None, progress: bool) -> int:
    """Run one worker process per slot until they end; restart one that dies, up to the
    restart limit. Exit code: 0 when every worker ended of its own accord, 130 after a second
    Ctrl-C, 1 when a worker was given up on (it kept dying: the queue may hold work no
    process is draining, and a script must not read that as success)."""
    ctx = mp.get_context("spawn")
    opts = {"db": db, "lease": lease, "until_empty": until_empty, "grace": grace, "memory": memory,
            "progress": progress, "slots": len(slots_)}
    procs: dict[int, mp.Process] = {}
    restarts = {s.index: Restarts() for s in slots_}
    signals = {"n": 0}
    given_up: list[str] = []

    def start(slot: Slot):
        p = ctx.Process(target=child, args=(slot, opts), name=f"farm-worker-{slot.index}")
        p.start()
        procs[slot.index] = p

    def forward(signum, _frame):
        signals["n"] += 1
        for p in procs.values():
            if p.is_alive():
                os.kill(p.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for s in slots_:
            start(s)
        by_index = {s.index: s for s in slots_}
        while procs:
            time.sleep(0.2)
            for index, p in list(procs.items()):
                if p.is_alive():
                    continue
                p.join()
                del procs[index]
                if p.exitcode in (0, 130) or signals["n"]:
                    continue
                if not restarts[index].died():
                    print(f"farm: worker {by_index[index].device} died {restarts[index].recent} times in a minute "
                          f"(last exit code {p.exitcode}); not restarting it.", file=sys.stderr)
                    given_up.append(by_index[index].device)
                    continue
                print(f"farm: worker {by_index[index].device} died (exit code {p.exitcode}); restarting it.",
                      file=sys.stderr)
                start(by_index[index])
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
    if signals["n"] > 1:
        return 130
    if given_up:
        print(f"farm: gave up on {len(given_up)} of {len(slots_)} worker(s) ({', '.join(given_up)}): they kept "
              f"dying; see their errors above (`farm status` shows what is left in the queue).", file=sys.stderr)
        return 1
    return 0


def child(slot: Slot, opts: dict):
    """A worker process: set up its device, then drain the queue until told to stop."""
    os.environ.update(slot.env)
    os.setpgrp()  # signals come from the supervisor, once
    parent = os.getppid()
    from .. import home
    from ..process import exit_now
    from ..queue.cache import Cache
    from ..queue.queue import Queue
    from ..quiet import quiet_libraries
    from . import publish
    from .runner import Runner
    from .worker import Worker

    quiet_libraries()
    if "FARM_TORCH_THREADS" in os.environ:
        import torch

        torch.set_num_threads(int(os.environ["FARM_TORCH_THREADS"]))
    queue = Queue(opts["db"] or home.db_path())
    device = "cpu" if slot.device == "cpu" else "cuda:0"  # inside the process, its one visible GPU
    runner = Runner(Cache(home.cache_dir()), device=device, memory_budget=opts["memory"])
    worker = Worker(queue, runner, lease=opts["lease"], label=slot.device)
    abort = threading.Event()

    def on_signal(signum, _frame):
        if worker.stopping:  # second signal: abort the task in flight now
            abort.set()
            raise KeyboardInterrupt
        worker.stopping = True
        threading.Thread(target=_interrupt_after, args=(worker, opts["grace"]), daemon=True).start()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    threading.Thread(target=_watch_parent, args=(worker, parent), daemon=True).start()
    show = _progress(slot, opts)
    code = 0
    with worker:
        try:
            worker.drain(on_task=show, until_empty=opts["until_empty"], on_job_done=publish.finish)
        except KeyboardInterrupt:  # the task in flight was released by Worker.execute
            code = 130 if abort.is_set() or not worker.stopping else 0
    queue.close()
    exit_now(code)  # without the interpreter's teardown: 1.5 s of CPU a worker, with torch loaded


def _interrupt_after(worker, grace: float):
    """Give the task in flight `grace` seconds, then interrupt it (it is released, not failed)."""
    deadline = time.time() + grace
    while time.time() < deadline:
        if worker.current is None:
            return
        time.sleep(0.1)
    if worker.current is not None:
        import _thread

        _thread.interrupt_main()


def _watch_parent(worker, parent: int):
    while not worker.stopping:
        if os.getppid() != parent:  # the supervisor died: finish up rather than run unsupervised
            worker.stopping = True
            return
        time.sleep(1)


def _progress(slot: Slot, opts: dict):
    """A tqdm bar per worker on a terminal; one line per finished task otherwise."""
    if not opts["progress"]:
        return None
    if sys.stderr.isatty():
        from tqdm import tqdm

        bar = tqdm(desc=f"{slot.device}#{slot.index}", unit="task", position=slot.index, dynamic_ncols=True)

        def show(task, cached):
            bar.set_postfix_str(f"job {task['job_id']} {task['name']}" + (" cached" if cached else ""),
                                refresh=False)
            bar.update(1)
        return show

    def show(task, cached):
        what = "failed" if cached is None else "cached" if cached else "done"
        print(f"[{slot.device}#{slot.index}] job {task['job_id']} {task['name']} {what}", file=sys.stderr,
              flush=True)
    return show


def parse_memory(value: str | None) -> int | None:
    """'24G' / '512M' / bytes -> bytes (farm gc's parser: one way to read a size)."""
    from ..units import parse_size

    return None if value is None else parse_size(value, "--memory")
