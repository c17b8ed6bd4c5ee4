"""The web app of `farm serve`: a live page of the farm and a JSON API beside it.

Routes (all JSON unless said):
- `GET /`: the page (plain HTML, CSS and a little script from `static/`, nothing from the network).
- `GET /api/farm`: the farm paused or not, its workers as `farm status --json` lists them, jobs by
  state, and whether actions are served.
- `GET /api/jobs?state=&page=&per_page=`: jobs newest first, each as `farm status JOB --json`.
- `GET /api/jobs/{id}`: one job: its status, its storyboard (keyframes with their thumbnails as
  they finish), its segments and their clips, and its video, contact sheet and manifest.
- `GET /api/jobs/{id}/events?after=N`: its events as `farm logs` prints them.
- `GET /api/stream`: server-sent events, one `change` whenever the queue database changes.
- `GET /files/...`: a job's video, contact sheet and manifest, and a keyframe task's picture,
  found through the database by job and task id, never by a path taken from the request.
- `POST /api/jobs/{id}/{cancel,retry,pause,resume,priority}`, `POST /api/farm/{pause,resume}`:
  the CLI's actions through farm/run/control.py (absent with `--read-only`).

The database is read through the queue module's read methods, on the event loop's thread (one
SQLite connection; each read is an indexed query of a millisecond or less).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import mimetypes
from pathlib import Path

from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import FarmError
from ...media import manifest, sheet
from ...plan.plan import assembly
from ...queue.cache import Cache
from ...queue.queue import Queue
from ...run import control, status
from .guard import Guard

STATIC = Path(__file__).parent / "static"
PAGES = {"/": ("index.html", "text/html; charset=utf-8"), "/static/app.js": ("app.js", "text/javascript"),
         "/static/style.css": ("style.css", "text/css")}
STATES = status.STATES
FILES = ("video", "contact_sheet", "manifest")
PER_PAGE, MAX_PER_PAGE = 25, 200
POLL = 0.25  # seconds between looks at the database for the live stream
KEEPALIVE = 15.0


class Farm:
    """What the routes share: the queue (opened on the event loop's thread), the cache, the
    settings."""

    def __init__(self, db: Path, cache: Path, read_only: bool):
        self.db, self.cache, self.read_only = Path(db), Cache(Path(cache)), read_only
        self.queue: Queue | None = None
        self.local = 0  # our own writes, which SQLite's data_version does not count for our connection

    def changes(self) -> list[int]:
        return [*self.queue.changes(), self.local]


def _int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise FarmError(f"`{name}` must be a whole number, got {raw[:40]!r}.", code=2) from None
    if not lo <= value <= hi:
        raise FarmError(f"`{name}` must be from {lo} to {hi}, got {value}.", code=2)
    return value


def _job_id(request: Request) -> int:
    return request.path_params["job"]


def _record(farm: Farm, job: int) -> dict:
    record = farm.queue.job(job)
    if record is None:
        raise FarmError(f"No job {job} in {farm.db}.", code=4)
    return record


def error_response(e: FarmError) -> JSONResponse:
    return JSONResponse({"error": e.message}, status_code=404 if e.code == 4 else 400)


def routes(farm: Farm) -> list[Route]:
    def api(fn):
        async def endpoint(request: Request):
            try:
                return await fn(request)
            except FarmError as e:
                return error_response(e)
        return endpoint

    async def page(request: Request):
        name, media = PAGES[request.url.path]
        return Response((STATIC / name).read_bytes(), media_type=media,
                        headers={"Cache-Control": "no-cache",
                                 "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                                                            "media-src 'self'; frame-ancestors 'none'"})

    async def farm_info(request: Request):
        return JSONResponse({"paused": farm.queue.farm_paused(), "workers": status.workers(farm.queue),
                             "states": {s: 0 for s in STATES} | farm.queue.job_states(),
                             "read_only": farm.read_only, "db": str(farm.db)})

    async def jobs(request: Request):
        state = request.query_params.get("state") or None
        if state is not None and state not in STATES:
            raise FarmError(f"`state` must be one of {', '.join(STATES)}, got {state[:40]!r}.", code=2)
        per_page = _int(request, "per_page", PER_PAGE, 1, MAX_PER_PAGE)
        page_no = _int(request, "page", 1, 1, 1_000_000)
        counts = farm.queue.job_states()
        total = counts.get(state, 0) if state else sum(counts.values())
        working = sum(w["state"] != "lost" for w in status.workers(farm.queue))
        rows = farm.queue.job_page(state, per_page, (page_no - 1) * per_page)
        return JSONResponse({"jobs": [status.job(farm.queue, r["id"], working) for r in rows], "total": total,
                             "page": page_no, "pages": max(1, -(-total // per_page)), "per_page": per_page})

    async def job(request: Request):
        job_id = _job_id(request)
        record = _record(farm, job_id)
        summary = status.job(farm.queue, job_id)
        tasks = farm.queue.tasks(job_id)
        board = []
        if assembly(tasks) is not None:
            by_key = {t["key"]: t for t in tasks}
            for k in sheet.storyboard({"tasks": tasks}):
                t = by_key[k["key"]]
                ready = t["state"] == "done" and (farm.cache.path(t["key"]) / "image.png").is_file()
                board.append({**{n: k[n] for n in ("index", "prompt", "image", "seed", "start", "end", "frames")},
                              "task": t["id"], "state": t["state"],
                              "thumbnail": f"/files/tasks/{t['id']}/image.png" if ready else None})
        segments = [{"task": t["id"], "name": t["name"], "state": t["state"], "worker": t["worker"],
                     "cached": t["cached"], "error": t["error"], "attempts": t["attempts"],
                     "clips": [{"task": c["id"], "name": c["name"], "state": c["state"]} for c in tasks
                               if c["kind"] == "clip" and c["name"].startswith(t["name"] + ".clip[")]}
                    for t in tasks if t["kind"] == "segment"]
        files = {name: f"/files/jobs/{job_id}/{name}" if path else None
                 for name, path in _files(farm, record, tasks).items()}
        return JSONResponse({"job": summary, "storyboard": board, "segments": segments, "files": files,
                             "tasks": [{"task": t["id"], "name": t["name"], "kind": t["kind"], "state": t["state"],
                                        "worker": t["worker"], "cached": t["cached"], "error": t["error"]}
                                       for t in tasks]})

    async def events(request: Request):
        job_id = _job_id(request)
        _record(farm, job_id)
        after = _int(request, "after", 0, 0, 1 << 62)
        names: dict = {}
        return JSONResponse({"events": [json.loads(status.event_line(farm.queue, e, names))
                                        for e in farm.queue.events(job_id, after=after)[:1000]]})

    async def stream(request: Request):
        async def changes():
            last, quiet = None, 0.0
            yield "retry: 1000\n\n"
            while True:
                now = farm.changes()
                if now != last:
                    last, quiet = now, 0.0
                    yield f"event: change\ndata: {json.dumps({'event': now[1]})}\n\n"
                elif quiet >= KEEPALIVE:
                    quiet = 0.0
                    yield ": keep-alive\n\n"
                if await request.is_disconnected():
                    return
                await asyncio.sleep(POLL)
                quiet += POLL

        return StreamingResponse(changes(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def job_file(request: Request):
        job_id, name = _job_id(request), request.path_params["name"]
        record = _record(farm, job_id)
        path = _files(farm, record, farm.queue.tasks(job_id)).get(name) if name in FILES else None
        if path is None:
            raise FarmError(f"Job {job_id} has no {name.replace('_', ' ')} (yet).", code=4)
        return FileResponse(path, media_type=mimetypes.guess_type(path.name)[0] or "application/octet-stream")

    async def task_image(request: Request):
        task = farm.queue.task(request.path_params["task"])
        if task is None or task["kind"] != "keyframe" or task["state"] != "done":
            raise FarmError("No finished keyframe of that id.", code=4)
        path = farm.cache.path(task["key"]) / "image.png"
        if not path.is_file():
            raise FarmError("That keyframe's picture is no longer in the cache.", code=4)
        return FileResponse(path, media_type="image/png")

    def action(do):
        async def endpoint(request: Request):
            if farm.read_only:
                return JSONResponse({"error": "this server is read-only (--read-only)"}, status_code=403)
            try:
                body = await request.json() if int(request.headers.get("content-length") or 0) else {}
            except ValueError:
                raise FarmError("The action's body is not JSON.", code=2) from None
            if not isinstance(body, dict):
                raise FarmError("The action's body must be a JSON object.", code=2)
            message = do(request, body)
            farm.local += 1
            return JSONResponse({"ok": True, "message": message})
        return api(endpoint)

    def job_action(request: Request, body: dict) -> str:
        job_id, what = _job_id(request), request.path_params["action"]
        _record(farm, job_id)
        if what == "cancel":
            return control.cancel(farm.queue, job_id)
        if what == "retry":
            return control.retry(farm.queue, job_id)
        if what in ("pause", "resume"):
            return control.pause(farm.queue, job_id, what == "pause")
        if what == "priority":
            return control.priority(farm.queue, job_id, body.get("priority"))
        raise FarmError(f"No action {what[:40]!r}: cancel, retry, pause, resume or priority.", code=4)

    def farm_action(request: Request, body: dict) -> str:
        what = request.path_params["action"]
        if what not in ("pause", "resume"):
            raise FarmError(f"No farm action {what[:40]!r}: pause or resume.", code=4)
        return control.pause(farm.queue, None, what == "pause")

    out = [Route(path, page, methods=["GET"]) for path in PAGES]
    out += [Route("/api/farm", api(farm_info), methods=["GET"]),
            Route("/api/jobs", api(jobs), methods=["GET"]),
            Route("/api/jobs/{job:int}", api(job), methods=["GET"]),
            Route("/api/jobs/{job:int}/events", api(events), methods=["GET"]),
            Route("/api/stream", stream, methods=["GET"]),
            Route("/files/jobs/{job:int}/{name}", api(job_file), methods=["GET"]),
            Route("/files/tasks/{task:int}/image.png", api(task_image), methods=["GET"])]
    if not farm.read_only:
        out += [Route("/api/jobs/{job:int}/{action}", action(job_action), methods=["POST"]),
                Route("/api/farm/{action}", action(farm_action), methods=["POST"])]
    return out


def _files(farm: Farm, record: dict, tasks: list[dict]) -> dict[str, Path | None]:
    """A done job's own files: its video (the assembly in the cache, which a later render cannot
    overwrite), and the contact sheet and manifest published beside its output while they are
    this job's (the manifest, read once, names the job). None where there is none (yet)."""
    found = dict.fromkeys(FILES)
    if record["state"] != "done":
        return found
    video = manifest.video_of(farm.cache, tasks)
    found["video"] = video if video is not None and video.is_file() else None
    if record["published"] != "published" or not record["output"]:
        return found
    side = manifest.path_for(record["output"])
    try:
        if manifest.load(side)["job"]["id"] != record["id"]:  # a later render of the same output replaced it
            return found
    except (FarmError, OSError, KeyError, TypeError, ValueError):
        return found
    sheet_path = manifest.sidecar(record["output"], ".contact.png")
    found["manifest"] = side if side.is_file() else None
    found["contact_sheet"] = sheet_path if sheet_path.is_file() else None
    return found


def app(db: Path, cache: Path, *, bind: str = "127.0.0.1", token: str | None = None,
        read_only: bool = False) -> Starlette:
    """The ASGI app over a queue database and its task cache."""
    farm = Farm(db, cache, read_only)

    @contextlib.asynccontextmanager
    async def lifespan(_):
        farm.queue = Queue(farm.db)  # opened on the event loop's thread, which every route runs on
        try:
            yield
        finally:
            farm.queue.close()

    return Starlette(routes=routes(farm), lifespan=lifespan,
                     middleware=[Middleware(Guard, bind=bind, token=token)])
