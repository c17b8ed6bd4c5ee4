"""Nothing changed, nothing loaded: what a render answered wholly from the cache costs.

Renders `jobs/example.toml` (a copy, in a temporary FARM_HOME) once, which builds the tiny
models and fills the cache; then, each round, times a fresh `farm render` of the same spec
(every task a cache hit) next to `farm status --json`, the cheapest command that opens
the queue. Both as fresh processes, imports included. Also says whether the cached render
imported torch, diffusers or transformers (it should not: goal <= 0.5 s).
Prints a table and, last, one JSON line: {"cached_render_s": ..., "status_s": ..., ...}.

    python scripts/bench_cached.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROBE = """
import json, sys
from farm.cli import main
try:
    main(["render", sys.argv[1], "--json", "--quiet"])
except SystemExit:
    pass
print(json.dumps(sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)))
"""


def timed(cmd, env) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        shutil.copytree(ROOT / "jobs", tmp / "jobs", ignore=shutil.ignore_patterns("renders"))
        spec = tmp / "jobs" / "example.toml"
        env = {**os.environ, "FARM_HOME": str(tmp / "home")}
        farm = [sys.executable, "-m", "farm.cli"]
        first = json.loads(subprocess.run(farm + ["render", str(spec), "--quiet", "--json"], env=env, check=True,
                                          capture_output=True, text=True).stdout)
        again = json.loads(subprocess.run(farm + ["render", str(spec), "--quiet", "--json"], env=env, check=True,
                                          capture_output=True, text=True).stdout)
        assert again["tasks"]["cached"] == again["tasks"]["total"] == first["tasks"]["total"], again
        imported = json.loads(subprocess.run([sys.executable, "-c", PROBE, str(spec)], env=env, check=True,
                                             capture_output=True, text=True).stdout.strip().splitlines()[-1])
        times = {"cached render": [], "status": []}
        for _ in range(args.rounds):
            times["cached render"].append(timed(farm + ["render", str(spec), "--quiet", "--json"], env))
            times["status"].append(timed(farm + ["status", "--json"], env))
    render_s, status_s = statistics.median(times["cached render"]), statistics.median(times["status"])
    print(f"{'':14}{'median s':>10}   runs")
    for k, v in times.items():
        print(f"{k:14}{statistics.median(v):>10.2f}   {'  '.join(f'{x:.2f}' for x in v)}")
    print(f"a cached render of jobs/example.toml ({again['tasks']['total']} tasks): {render_s:.2f} s (goal <= 0.5 s), "
          f"{render_s / status_s:.1f}x `farm status`; "
          f"imported {', '.join(imported) or 'none of torch, diffusers, transformers'}")
    print(json.dumps({"cached_render_s": round(render_s, 3), "status_s": round(status_s, 3),
                      "ratio": round(render_s / status_s, 3), "imported": imported, "tasks": again["tasks"]["total"],
                      "rounds": args.rounds}))


if __name__ == "__main__":
    main()
