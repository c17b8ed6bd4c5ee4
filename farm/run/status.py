"""What `farm status` and `farm logs` report: job and worker summaries and event lines,
as plain dicts (printed as JSON for scripts, or as text for people)."""

from __future__ import annotations

import json
import sqlite3
import time

from ..queue.queue import Queue, gone

STATES = ("queued", "running", "done", "failed", "canceled")


def job(queue: Queue, job_id: int, workers: int | None = None) -> dict | None:
    """One job's summary; `workers` (live ones, for the ETA) is counted when not given."""
    record = queue.job(job_id)
    if record is None:
        return None
    counts = {s: 0 for s in STATES} | queue.counts(job_id)
    times = queue.timings(job_id)
    now = time.time()
    start, end = record["started_at"], record["finished_at"]
    elapsed = (end or now) - start if start else 0.0
    left = counts["queued"] + counts["running"]
    eta = None
    if record["state"] in ("queued", "running") and times["executed"]:
        if workers is None:
            workers = len(queue.workers())
        eta = round(left * times["mean_seconds"] / max(1, workers), 1)
    return {
        "job": job_id,
        "name": record["name"],
        "state": record["state"],
        "paused": bool(record["paused"]),
        "priority": record["priority"],
        "output": record["output"],
        "spec": record["spec_path"],
        "tasks": {"total": record["tasks_total"], **counts, "cached": times["cached"]},
        "error": record["error"],
        "published": record["published"],  # a done job: published, superseded, failed, or None (not yet)
        "created_at": record["created_at"],
        "elapsed": round(elapsed, 1),
        "eta": eta,
    }


def sweep(queue: Queue):
    """Before reporting, make the queue say what is true now: tasks of dead workers back in the
    queue, jobs of renders that are gone canceled (`Queue.sweep`)."""
    try:
        queue.sweep()
    except sqlite3.Error:
        pass  # a read-only or full database: report it as it stands


def farm(queue: Queue, recent: int = 20) -> dict:
    sweep(queue)
    jobs = queue.jobs()
    live_jobs = [j for j in jobs if j["state"] in ("queued", "running")]
    ended = [j for j in jobs if j["state"] not in ("queued", "running")][-recent:]
    workers_ = workers(queue)
    working = sum(w["state"] != "lost" for w in workers_)
    return {"paused": queue.farm_paused(),
            "jobs": [job(queue, j["id"], working) for j in ended + live_jobs], "workers": workers_}


def workers(queue: Queue) -> list[dict]:
    """The live workers as `farm status` lists them."""
    out = []
    for w in queue.workers():
        # A SIGKILLed worker or driver leaves its rows fresh for up to a lease (60 s by default):
        # they are shown `lost`, not busy (the sweep above gave their tasks back to the queue).
        out.append({"name": w["name"], "pid": w["pid"], "host": w["host"], "node": w["node"], "device": w["device"],
                    "state": "lost" if gone(w) else w["state"], "models": w["models"], "task": w["task"],
                    "done": w["done"], "heartbeat_age": round(time.time() - w["heartbeat_at"], 1)})
    return out


def text_job(s: dict) -> str:
    t = s["tasks"]
    eta = f", eta {s['eta']:.0f}s" if s["eta"] is not None else ""
    paused = " (paused)" if s["paused"] else ""
    line = (f"job {s['job']:>4}  {s['name']:<20} {s['state']:<9}{paused} p{s['priority']:<3} "
            f"{t['done']}/{t['total']} done, {t['running']} running, {t['queued']} queued, {t['failed']} failed"
            f"  {s['elapsed']:.0f}s{eta}")
    if s["error"]:
        line += f"\n           error: {s['error']}"
    if s["published"] == "superseded":
        line += f"\n           not copied to {s['output']}: a newer render of it was published first (`farm logs " \
                f"{s['job']}`); its video is in the cache"
    return line


def text_farm(s: dict) -> str:
    lines = ["farm is PAUSED: workers claim nothing until `farm resume`."] if s["paused"] else []
    lines += [text_job(j) for j in s["jobs"]] or ["no jobs"]
    lines.append("")
    if not s["workers"]:
        lines.append("no workers running (start some with `farm work`)")
    for w in s["workers"]:
        doing = f"job {w['task']['job']} {w['task']['name']}" if w["task"] else (
            "stopping" if w["state"] == "stopping" else "idle")
        if w["state"] == "lost":  # its process is gone; a task still its own: the sweep could not write
            doing = f"lost ({doing})" if w["task"] else "lost"
        where = f"{w['device']}@{w['node'][:8]}" if w["node"] else w["device"]  # a Ray actor: its node too
        lines.append(f"worker {w['name']:<24} {where:<8} {doing:<28} models: {len(w['models'])}, "
                     f"{w['done']} tasks done")
    return "\n".join(lines)


def event_line(queue: Queue, e: dict, names: dict) -> str:
    data = json.loads(e["data"]) if e["data"] else {}
    if e["task_id"] is not None and e["task_id"] not in names:
        names[e["task_id"]] = queue.task_name(e["task_id"])
    out = {"id": e["id"], "ts": round(e["ts"], 3), "job": e["job_id"], "event": e["event"],
           "task": names.get(e["task_id"]), "worker": e["worker"]}
    return json.dumps({**out, **data})
