"""Claim + complete throughput of the SQLite queue, on trivial tasks.

Fills a fresh queue database (in a temporary folder) with N no-op tasks in jobs of 500,
then lets 1 and then 4 worker processes drain it, each looping as a worker does: report the
task done and claim the next in one transaction (`Queue.complete_and_claim`), with the real
rule (affinity lookahead, dependency and blocklist checks, events and all).

For scale it also runs the floor: the same processes doing the smallest write transaction
SQLite has (bump a counter, append a row). Every claim is a write transaction, so how 4
processes compare with 1 there is what this machine allows any SQLite queue; on a 2-core
box it swings around 1 from run to run.

Prints a table and, last, one JSON line:
{"tasks_per_s_1": ..., "tasks_per_s_4": ..., "ratio": ..., "floor_ratio": ...}.

    python scripts/bench_queue.py [--tasks 20000]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sqlite3
import tempfile
import time
from pathlib import Path

from farm.plan.plan import Plan, Task
from farm.queue.queue import Queue


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


def floor(db: str, name: str, ready, start, out):
    """The smallest write transaction: what any SQLite queue pays per task at least."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None)
    conn.execute("PRAGMA synchronous = NORMAL")
    ready.release()
    start.wait()
    n = 0
    while True:
        conn.execute("BEGIN IMMEDIATE")
        left = conn.execute("UPDATE counter SET left = left - 1 RETURNING left").fetchone()[0]
        conn.execute("INSERT INTO log (worker) VALUES (?)", (name,))
        conn.execute("COMMIT")
        if left < 0:
            break
        n += 1
    conn.close()
    out.put(n)


def fill_floor(db: Path, n: int):
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE counter (left INTEGER)")
    conn.execute("INSERT INTO counter VALUES (?)", (n,))
    conn.execute("CREATE TABLE log (id INTEGER PRIMARY KEY, worker TEXT)")
    conn.commit()
    conn.close()


def run(n: int, procs: int, target=drain, prepare=fill) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "queue.db"
        prepare(db, n)
        ctx = mp.get_context("spawn")
        ready, start, out = ctx.Semaphore(0), ctx.Event(), ctx.Queue()
        ps = [ctx.Process(target=target, args=(str(db), f"w{i}", ready, start, out)) for i in range(procs)]
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
    floors = {procs: run(args.tasks * 5, procs, floor, fill_floor) for procs in (1, 4)}
    print(f"{'':>28}{'processes':>10}{'tasks':>8}{'tasks/s':>10}")
    for procs, rate in rates.items():
        print(f"{'farm queue':>28}{procs:>10}{args.tasks:>8}{rate:>10.0f}")
    for procs, rate in floors.items():
        print(f"{'floor: smallest write tx':>28}{procs:>10}{args.tasks * 5:>8}{rate:>10.0f}")
    print(f"4 processes / 1: farm queue {rates[4] / rates[1]:.2f}, floor {floors[4] / floors[1]:.2f} "
          f"(on {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; goals: >= 5,000 tasks/s in 1, 4 / 1 >= 0.8)")
    print(json.dumps({"tasks_per_s_1": round(rates[1]), "tasks_per_s_4": round(rates[4]),
                      "ratio": round(rates[4] / rates[1], 2), "floor_ratio": round(floors[4] / floors[1], 2),
                      "cores": os.cpu_count(), "tasks": args.tasks, "load": round(os.getloadavg()[0], 1)}))


if __name__ == "__main__":
    main()
