"""Claim + complete throughput of the SQLite queue, on trivial tasks.

Fills a fresh queue database (in a temporary folder) with N no-op tasks in jobs of 500,
then lets 1 and then 4 worker processes drain it, each looping as a worker does: report the
task done and claim the next in one transaction (`Queue.complete_and_claim`), with the real
rule (affinity lookahead, dependency and blocklist checks, events and all). Prints a table
and, last, one JSON line: {"tasks_per_s_1": ..., "tasks_per_s_4": ...}.

    python scripts/bench_queue.py [--tasks 20000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import tempfile
import time
from pathlib import Path

from farm.plan import Plan, Task
from farm.queue import Queue


class _Spec:
    name = "bench"
    path = Path("bench.toml")
    digest = "-"
    out = Path("bench.mp4")


def fill(db: Path, n: int):
    q = Queue(db)
    per_job = 500
    for j in range(0, n, per_job):
        q.submit(Plan(_Spec(), [Task(f"t{i}", "noop", f"k{j + i}", {}, (), f"model{i % 3}")
                                for i in range(min(per_job, n - j))]))
    q.close()


def drain(db: str, name: str, ready, start, out):
    q = Queue(db)
    models = {"model0"}
    ready.release()
    start.wait()
    n = 0
    t = q.claim(name, lease=60, models=models)
    while t is not None:  # as a worker does: report a task and claim the next in one transaction
        _, t = q.complete_and_claim(t, name, cached=False, seconds=0.0, lease=60, models=models)
        n += 1
    q.close()
    out.put(n)


def run(n: int, procs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "queue.db"
        fill(db, n)
        ctx = mp.get_context("spawn")
        ready, start, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=drain, args=(str(db), f"w{i}", ready, start, out)) for i in range(procs)]
        for p in ps:
            p.start()
        for _ in ps:  # every process has imported and connected before the clock starts
            ready.acquire()
        t0 = time.perf_counter()
        start.set()
        done = sum(out.get() for _ in ps)
        elapsed = time.perf_counter() - t0
        for p in ps:
            p.join()
        assert done == n, (done, n)
        return n / elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=20000)
    args = ap.parse_args()
    rates = {procs: run(args.tasks, procs) for procs in (1, 4)}
    print(f"{'processes':>10}{'tasks':>8}{'tasks/s':>10}")
    for procs, rate in rates.items():
        print(f"{procs:>10}{args.tasks:>8}{rate:>10.0f}")
    print(json.dumps({"tasks_per_s_1": round(rates[1]), "tasks_per_s_4": round(rates[4]), "tasks": args.tasks}))


if __name__ == "__main__":
    main()
