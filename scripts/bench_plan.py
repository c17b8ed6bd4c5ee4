"""`farm plan` of a large sweep next to `farm submit` of the same spec.

Writes `jobs/sweep.toml` with 250 seeds x its 2 keyframe models = 500 variants (3,500 tasks)
into a temporary FARM_HOME, builds the tiny models once, then each round times a fresh
`farm plan` and a fresh `farm submit` of it (imports included; submit into a fresh queue
database each time). Both validate every variant and build its plan; plan also looks each
task up in the cache, estimates its time and its peak memory, and submit writes the jobs.
Goal: plan within 1.5x of submit. Prints a table with the wall and CPU (user + sys) seconds
and the load average, and, last, one JSON line: {"plan_s": ..., "submit_s": ..., "ratio": ...}.

    python scripts/bench_plan.py [--rounds 3] [--seeds 250]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def timed(cmd, env) -> tuple[float, float]:
    """(wall, CPU of the child) seconds."""
    before = os.times()
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = os.times()
    return wall, (after.children_user - before.children_user) + (after.children_system - before.children_system)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seeds", type=int, default=250)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "jobs", tmp / "jobs", ignore=shutil.ignore_patterns("renders"))
        spec = tmp / "jobs" / "sweep.toml"
        text = spec.read_text()
        seeds = ", ".join(str(i) for i in range(1, args.seeds + 1))
        text, n = re.subn(r'"shot\.seed" = \[[^\]]*\]', f'"shot.seed" = [{seeds}]', text)
        assert n == 1, "jobs/sweep.toml no longer sweeps shot.seed"
        spec.write_text(text)
        env = {**os.environ, "FARM_HOME": str(tmp / "home")}
        farm = [sys.executable, "-m", "farm.cli"]
        out = subprocess.run(farm + ["plan", str(spec), "--json"], env=env, check=True, capture_output=True,
                             text=True).stdout  # builds the tiny models once
        variants = out.count("\n")
        times = {"plan": [], "submit": []}
        for _ in range(args.rounds):
            times["plan"].append(timed(farm + ["plan", str(spec)], env))
            for f in ("queue.db", "queue.db-wal", "queue.db-shm"):
                (tmp / "home" / f).unlink(missing_ok=True)
            times["submit"].append(timed(farm + ["submit", str(spec)], env))
    plan_s, submit_s = (statistics.median(w for w, _ in times[k]) for k in ("plan", "submit"))
    plan_cpu, submit_cpu = (statistics.median(c for _, c in times[k]) for k in ("plan", "submit"))
    print(f"{'':8}{'median s':>10}{'CPU s':>8}   runs (wall/CPU)")
    for k, v in times.items():
        print(f"{k:8}{statistics.median(w for w, _ in v):>10.2f}{statistics.median(c for _, c in v):>8.2f}   "
              f"{'  '.join(f'{w:.2f}/{c:.2f}' for w, c in v)}")
    print(f"{variants} variants: plan / submit {plan_s / submit_s:.2f} wall, {plan_cpu / submit_cpu:.2f} CPU "
          f"(goal <= 1.5; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(json.dumps({"plan_s": round(plan_s, 3), "submit_s": round(submit_s, 3), "ratio": round(plan_s / submit_s, 3),
                      "plan_cpu_s": round(plan_cpu, 3), "submit_cpu_s": round(submit_cpu, 3),
                      "cpu_ratio": round(plan_cpu / submit_cpu, 3), "variants": variants, "rounds": args.rounds}))


if __name__ == "__main__":
    main()
