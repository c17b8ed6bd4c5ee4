"""Warm routing, measured: model loads and makespan of farm's claim rule against plain FIFO.

A mixed workload goes through the real claim code (`Queue.claim` /
`Queue.complete_and_claim`, hence `choose()`, in a temporary SQLite database) while the
workers' time is simulated: nothing sleeps, a clock jumps from one task's end to the next.

The workload (`workload()`): 14 models (7 text-to-image, 7 image-to-video), 4 GPU workers,
19 jobs submitted at once, 451 tasks: long storyboards, two sweeps (seed x keyframe model),
an animatic whose keyframes alternate two models, storyboards reusing the others' models.
Each job is what `farm/plan/plan.py` builds: one keyframe task per frame, one segment per
keyframe that needs it and the next, one assembly (no model) that needs every segment.
Every task costs 1 unit of simulated time, loading a model 10 units, and a worker holds at
most 2 models (it unloads the least recently used one, as `Runner.pipe` does with
`max_warm = 2` on a GPU).

Two runs over the same workload, both through the same queue and the same workers (each
telling the queue the models it holds, as `Worker.held()` does):
- farm: the claim rule as it is;
- FIFO: affinity off, `AFFINITY_WINDOW = 1`: a worker always takes the head of the queue.

The lower bound is the total work over the workers: every task's unit plus one load of each
model (no schedule loads a model fewer than once), divided by 4.

Prints both runs, their ratios, the bound and how far each makespan is from it; last, one
JSON line: {"loads_ratio": ..., "makespan_ratio": ..., "makespan_over_bound": ...}.

    python scripts/bench_scheduler.py [--workers 4] [--seed 0]
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import tempfile
from collections import OrderedDict
from pathlib import Path

from farm.plan.plan import Plan, Task
from farm.queue import queue as queue_mod
from farm.queue.queue import Queue

TASK = 1.0  # simulated time of one task
LOAD = 10.0  # of loading a model: 10x a task
MAX_WARM = 2  # models a worker holds at once
LEASE = 1e9  # real seconds: the simulation never lets a lease run out


class _Spec:
    def __init__(self, name):
        self.name, self.path, self.digest, self.out = name, Path(f"{name}.toml"), "-", Path(f"{name}.mp4")


def _job(name: str, keyframe_models: list[str], motion: str | None, frames: int) -> Plan:
    """A storyboard as `farm/plan/plan.py` expands it: keyframe i drawn by keyframe_models[i % n]
    (per-frame `model` overrides), segment i needing keyframes i and i + 1 (motion None: an
    animatic, ffmpeg only), one assembly needing every segment."""
    tasks = [Task(f"keyframe[{i}]", "keyframe", f"{name}-k{i}", {}, (), keyframe_models[i % len(keyframe_models)])
             for i in range(frames)]
    tasks += [Task(f"segment[{i}]", "segment", f"{name}-s{i}", {},
                   (f"keyframe[{i}]",) + ((f"keyframe[{i + 1}]",) if i + 1 < frames else ()), motion)
              for i in range(frames)]
    tasks.append(Task("assemble", "assemble", f"{name}-a", {}, tuple(f"segment[{i}]" for i in range(frames))))
    return Plan(_Spec(name), tasks)


def workload(seed: int = 0) -> list[Plan]:
    """What a studio's Makefile submits at once, in this order: long storyboards, two sweeps
    (seed x keyframe model, the model varying fastest, as `[sweep]` expands them), an
    animatic whose frames alternate two keyframe models, and storyboards reusing models of
    the others. 14 models: t2i-0..6 (keyframes), i2v-0..6 (motion)."""
    rng = random.Random(seed)

    def n(frames):  # storyboards differ in length
        return frames + rng.randint(-2, 2)

    plans = [_job("board-a", ["t2i-0"], "i2v-0", n(20)),
             _job("board-b", ["t2i-1"], "i2v-1", n(20))]
    plans += [_job(f"sweep-x-seed{s}-{m}", [m], "i2v-4", 8) for s in (1, 2) for m in ("t2i-4", "t2i-5", "t2i-0")]
    plans += [_job("board-c", ["t2i-2"], "i2v-2", n(20)),
              _job("animatic", ["t2i-2", "t2i-5"], None, n(12))]
    plans += [_job(f"sweep-y-seed{s}-{m}", [m], "i2v-5", 8) for s in (1, 2) for m in ("t2i-6", "t2i-1", "t2i-4")]
    plans += [_job("board-d", ["t2i-3"], "i2v-3", n(20)),
              _job("board-e", ["t2i-6"], "i2v-6", n(12)),
              _job("board-f", ["t2i-3", "t2i-0"], "i2v-0", n(12))]
    return plans


class SimWorker:
    def __init__(self, name):
        self.name = name
        self.warm: OrderedDict[str, None] = OrderedDict()  # least recently used first
        self.loads = 0

    def held(self) -> frozenset:
        return frozenset(self.warm)

    def run(self, task) -> float:
        """Simulated seconds to run `task` here, loading (and unloading) as a worker does."""
        model, cost = task["model"], TASK
        if model is not None:
            if model not in self.warm:
                while len(self.warm) >= MAX_WARM:
                    self.warm.popitem(last=False)
                self.warm[model] = None
                self.loads += 1
                cost += LOAD
            self.warm.move_to_end(model)
        return cost


def simulate(plans: list[Plan], n_workers: int, affinity: bool) -> dict:
    window = queue_mod.AFFINITY_WINDOW
    if not affinity:  # a window of one task: the head of the queue, always
        queue_mod.AFFINITY_WINDOW = 1
    try:
        return _simulate(plans, n_workers)
    finally:
        queue_mod.AFFINITY_WINDOW = window


def _simulate(plans: list[Plan], n_workers: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        q = Queue(Path(tmp) / "queue.db")
        for plan in plans:
            q.submit(plan)
        workers = [SimWorker(f"gpu{i}") for i in range(n_workers)]
        models = SimWorker.held
        clock, running, idle, done = 0.0, [], list(workers), 0

        def start(w, task):
            heapq.heappush(running, (clock + w.run(task), w.name, task))

        while True:
            for w in list(idle):  # idle workers try again whenever something finished
                task = q.claim(w.name, lease=LEASE, models=models(w))
                if task is not None:
                    idle.remove(w)
                    start(w, task)
            if not running:
                break
            clock, name, task = heapq.heappop(running)
            w = next(x for x in workers if x.name == name)
            _, following = q.complete_and_claim(task, w.name, cached=False, seconds=0.0, lease=LEASE,
                                                models=models(w))
            done += 1
            if following is None:
                idle.append(w)
            else:
                start(w, following)
        left = q.pending()
        q.close()
    if left:
        raise SystemExit(f"the simulation stopped with {left} tasks unfinished")
    return {"loads": sum(w.loads for w in workers), "makespan": clock, "tasks": done,
            "per_worker": [w.loads for w in workers]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    plans = workload(args.seed)
    n_tasks = sum(len(p.tasks) for p in plans)
    n_models = len({t.model for p in plans for t in p.tasks if t.model})
    farm = simulate(plans, args.workers, affinity=True)
    fifo = simulate(plans, args.workers, affinity=False)
    bound = (n_tasks * TASK + n_models * LOAD) / args.workers

    print(f"{n_tasks} tasks in {len(plans)} jobs, {n_models} models, {args.workers} workers holding at most "
          f"{MAX_WARM} models; a task {TASK:g}, a load {LOAD:g} (simulated time)")
    print(f"{'rule':<6} {'loads':>6} {'makespan':>9} {'over bound':>11}  loads per worker")
    for name, r in (("farm", farm), ("fifo", fifo)):
        print(f"{name:<6} {r['loads']:>6} {r['makespan']:>9.1f} {r['makespan'] / bound:>10.2f}x  {r['per_worker']}")
    loads_ratio = farm["loads"] / fifo["loads"]
    makespan_ratio = farm["makespan"] / fifo["makespan"]
    print(f"farm / fifo: loads {loads_ratio:.3f} (goal <= 0.25), makespan {makespan_ratio:.3f} (goal <= 0.75)")
    print(f"lower bound (total work / workers) {bound:.1f}: farm's makespan is {farm['makespan'] / bound:.2f}x it, "
          f"{farm['makespan'] - bound:.1f} above")
    print(json.dumps({"loads_ratio": round(loads_ratio, 4), "makespan_ratio": round(makespan_ratio, 4),
                      "makespan_over_bound": round(farm["makespan"] / bound, 4),
                      "loads": {"farm": farm["loads"], "fifo": fifo["loads"]},
                      "makespan": {"farm": farm["makespan"], "fifo": fifo["makespan"], "bound": bound},
                      "tasks": n_tasks, "models": n_models, "workers": args.workers}))


if __name__ == "__main__":
    main()
