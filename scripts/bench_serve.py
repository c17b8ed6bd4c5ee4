"""How fast `farm serve` answers over a big queue database.

Builds a database of at least 10,000 jobs and 100,000 tasks (one real plan of a 4-keyframe
storyboard of the tiny models, 9 tasks, submitted 11,112 times; the oldest 40% of the jobs run
to done through the queue's own claim and complete, so they have events and mixed states), starts
`farm serve` on it as its own process, and times what the page asks for, each 200 times over one
keep-alive connection: the jobs list (first page, a state filter, a deep page), one job's page
and its events. Prints a table of milliseconds (median, 95th percentile, max) and one JSON line.
Goal: the jobs list and one job's page each under 100 ms at the 95th percentile.

    python scripts/bench_serve.py [--jobs 11112] [--requests 200] [--db PATH (kept, reused)]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SPEC = """
[shot]
name = "bench"
fps = 8
size = [64, 64]
seed = 1
out = "bench.mp4"

[keyframes]
model = "tiny"
steps = 2

[motion]
model = "tiny-video"
steps = 2
""" + "".join(f'\n[[frames]]\nprompt = "shot {i}: a lighthouse"\nseconds = 1.0\n' for i in range(4))
GOAL_MS = 100.0


def build(db: Path, jobs: int, folder: Path):
    from farm.plan import plan
    from farm.queue.queue import Queue
    from farm.spec import spec

    path = folder / "bench.toml"
    path.write_text(textwrap.dedent(SPEC))
    p = plan.build(spec.load(path))
    q = Queue(db)
    started = time.perf_counter()
    for i in range(jobs):
        q.submit(p)
        if i % 1000 == 999:
            print(f"  {i + 1:,} jobs submitted ({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    done = int(jobs * 0.4)
    while True:  # the oldest jobs first: at one priority, claims take the oldest task
        task = q.claim("bench-worker", lease=600)
        if task is None or task["job_id"] > done:
            if task is not None:
                q.release(task, "bench-worker")
            break
        q.complete(task, "bench-worker", cached=False, seconds=0.01)
    q.close()


def timed(conn: http.client.HTTPConnection, path: str, host: str) -> float:
    t = time.perf_counter()
    conn.request("GET", path, headers={"Host": host})
    r = conn.getresponse()
    body = r.read()
    elapsed = (time.perf_counter() - t) * 1000
    assert r.status == 200, (path, r.status, body[:200])
    return elapsed


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=11_112)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--db", type=Path, help="build the database here (and reuse it next time)")
    args = ap.parse_args()
    random.seed(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        os.environ.setdefault("FARM_HOME", str(tmp / "home"))
        db = args.db or tmp / "queue.db"
        if not db.exists():
            print(f"building {db} with {args.jobs:,} jobs...", file=sys.stderr)
            build(db, args.jobs, tmp)
        from farm.queue.queue import Queue

        q = Queue(db)
        n_jobs = sum(q.job_states().values())
        n_tasks = q.conn.execute("SELECT count(*) FROM tasks").fetchone()[0]
        states = q.job_states()
        q.close()
        server = subprocess.Popen([sys.executable, "-m", "farm.cli", "serve", "--port", "0", "--db", str(db)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            line = server.stderr.readline()
            port = int(line.split("127.0.0.1:")[1].split("/")[0])
            host = f"127.0.0.1:{port}"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ids = [random.randint(1, n_jobs) for _ in range(args.requests)]
            asks = {
                "jobs list, first page": lambda i: "/api/jobs",
                "jobs list, state=queued": lambda i: "/api/jobs?state=queued",
                "jobs list, page 300": lambda i: "/api/jobs?page=300",
                "one job's page": lambda i: f"/api/jobs/{ids[i]}",
                "one job's events": lambda i: f"/api/jobs/{ids[i]}/events",
                "farm (workers, counts)": lambda i: "/api/farm",
            }
            for path in ("/api/jobs", f"/api/jobs/{ids[0]}"):  # warm: imports, first queries
                timed(conn, path, host)
            results = {}
            for name, path in asks.items():
                results[name] = [timed(conn, path(i), host) for i in range(args.requests)]
            conn.close()
        finally:
            server.terminate()
            server.wait(10)
    print(f"{n_jobs:,} jobs ({', '.join(f'{n:,} {s}' for s, n in sorted(states.items()))}), {n_tasks:,} tasks; "
          f"{args.requests} requests each; load {os.getloadavg()[0]:.1f}")
    print(f"{'request':<28}{'median ms':>10}{'p95 ms':>9}{'max ms':>9}")
    out = {}
    for name, times in results.items():
        p95 = statistics.quantiles(times, n=20)[18]
        out[name] = {"median_ms": round(statistics.median(times), 2), "p95_ms": round(p95, 2),
                     "max_ms": round(max(times), 2)}
        print(f"{name:<28}{statistics.median(times):>10.1f}{p95:>9.1f}{max(times):>9.1f}")
    worst = max(out["jobs list, first page"]["p95_ms"], out["one job's page"]["p95_ms"])
    print(f"goal: jobs list and one job's page under {GOAL_MS:.0f} ms at p95: {'met' if worst < GOAL_MS else 'MISSED'} "
          f"(worst {worst:.1f} ms)")
    print(json.dumps({"jobs": n_jobs, "tasks": n_tasks, "requests": args.requests, "results": out,
                      "goal_met": worst < GOAL_MS}))


if __name__ == "__main__":
    main()
