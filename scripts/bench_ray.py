"""Ray's overhead per task: the same job through `farm work --cpu --workers 2` and through
`farm work --ray local --cpu --workers 2` (two CPU actors), on the tiny built-in models.

The job is bench_overhead.py's 21-task shot (10 keyframes, 10 segments, 1 assembly, 128x128,
8 steps). Each round starts `farm work` with an empty cache and queue, waits until both of its
workers (processes, or actors) have registered, then submits the job and times it from the
submission to the job's `done`: what is compared is the farm at work, not the one-off start-up
of Ray (printed apart, as `ready s`). Both load their models during the job. The videos of both
modes are checked to be byte-identical. Prints a table and, last, one JSON line:
{"local_s", "ray_s", "ratio", ...} (medians; ratio = ray / local; goal <= 1.15).

    python scripts/bench_ray.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_overhead import SPEC  # noqa: E402 - the same 21-task shot

MODES = {"local": ["--cpu", "--workers", "2"], "ray": ["--ray", "local", "--cpu", "--workers", "2"]}


def live_workers(db: Path) -> int:
    try:
        conn = sqlite3.connect(db)
        try:
            return conn.execute("SELECT count(*) FROM workers WHERE heartbeat_at + lease >= ?",
                                (time.time(),)).fetchone()[0]
        finally:
            conn.close()
    except sqlite3.OperationalError:
        return 0


def one(mode: str, home: Path, spec: Path, env: dict) -> dict:
    for d in ("cache", "queue.db", "queue.db-wal", "queue.db-shm"):
        subprocess.run(["rm", "-rf", str(home / d)], check=True)
    db = home / "queue.db"
    t = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "farm.cli", "work", *MODES[mode], "--quiet"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        while live_workers(db) < 2:
            if proc.poll() is not None:
                raise SystemExit(f"farm work ({mode}) exited early: {proc.stderr.read()}")
            time.sleep(0.1)
        ready = time.perf_counter() - t
        t = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "farm.cli", "submit", str(spec), "--json"], env=env, check=True,
                             capture_output=True, text=True).stdout
        job = json.loads(out)["job"]
        conn = sqlite3.connect(db)
        while conn.execute("SELECT state FROM jobs WHERE id = ?", (job,)).fetchone()[0] not in (
                "done", "failed", "canceled"):
            time.sleep(0.05)
        seconds = time.perf_counter() - t
        state, tasks = conn.execute("SELECT state, tasks_total FROM jobs WHERE id = ?", (job,)).fetchone()
        runners = {w for (w,) in conn.execute("SELECT DISTINCT worker FROM tasks WHERE job_id = ?", (job,))}
        conn.close()
        if state != "done":
            raise SystemExit(f"the job {state} under {mode}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=120)
    video = spec.parent / "bench.mp4"
    return {"ready": ready, "seconds": seconds, "tasks": tasks, "workers": len(runners),
            "sha": hashlib.sha256(video.read_bytes()).hexdigest()}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        home = tmp / "home"
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"FARM_HOME": str(home)}
        spec = tmp / "bench.toml"
        spec.write_text(SPEC)
        subprocess.run([sys.executable, "-c", "from farm import models\nfor m in ('tiny', 'tiny-video'): "
                        "models.local_path(models.resolve(m))"], env=env, check=True, capture_output=True)
        runs = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:  # interleaved, so a busy spell on the machine falls on both
                runs[mode].append(one(mode, home, spec, env))
    shas = {r["sha"] for rs in runs.values() for r in rs}
    med = {m: statistics.median(r["seconds"] for r in rs) for m, rs in runs.items()}
    print(f"{'':6}{'job s (median)':>15}{'runs':>24}{'ready s':>10}{'workers':>9}")
    for mode, rs in runs.items():
        each = "  ".join(f"{r['seconds']:.2f}" for r in rs)
        print(f"{mode:6}{med[mode]:>15.2f}{each:>24}"
              f"{statistics.median(r['ready'] for r in rs):>10.2f}{max(r['workers'] for r in rs):>9}")
    tasks = runs["local"][0]["tasks"]
    print(f"ratio ray/local: {med['ray'] / med['local']:.3f} over {tasks} tasks ({args.rounds} rounds); "
          f"videos {'byte-identical' if len(shas) == 1 else 'DIFFER'}")
    print(json.dumps({"local_s": round(med["local"], 3), "ray_s": round(med["ray"], 3),
                      "ratio": round(med["ray"] / med["local"], 4), "tasks": tasks, "identical": len(shas) == 1}))


if __name__ == "__main__":
    main()
