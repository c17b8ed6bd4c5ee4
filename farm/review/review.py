"""The review page: finished renders side by side in one self-contained static HTML page.

`collect()` turns what the user names (job ids, spec files, folders of renders, manifest
files) into manifests; `write()` copies each render's video (or a browser-playable preview of
it), contact sheet and manifest into `<out>/media/` and writes `<out>/index.html`: the videos
playing side by side, laid out as a grid when exactly two settings vary across a full
product of values (a sweep's seed x model), a table of every setting that differs, and the
contact sheets. Plain HTML and CSS, no network: the folder can be zipped and mailed.
`serve()` serves the folder on 127.0.0.1 with the standard library's HTTP server.
"""

from __future__ import annotations

import html
import http.server
import re
from functools import partial
from pathlib import Path

from .. import home
from ..errors import FarmError
from ..files import atomic_path, atomic_write, link_or_copy
from ..media import encode, manifest as manifests, sheet
from ..plan import tasks
from ..plan.plan import assembly
from ..queue.cache import Cache
from ..queue.queue import Queue

# --- what to review ---------------------------------------------------------------------------


def collect(targets: list[str], *, db: str | Path | None = None) -> list[dict]:
    """Manifests for each target, in order: a job id, a spec file (its latest finished render),
    a manifest file, or a folder (every `*.manifest.json` under it). Each manifest gets a
    `_files` entry saying where its video, contact sheet and manifest are on this machine."""
    if not targets:
        raise FarmError("Name at least one render to review: a job id, a spec file or a folder of renders.", code=2)
    queue = None
    found: list[dict] = []

    def q():
        nonlocal queue
        if queue is None:
            path = Path(db) if db else home.db_path()
            if not path.exists():
                raise FarmError(f"There is no queue database at {path}: render something first.", code=2)
            queue = Queue(path)
        return queue

    for target in targets:
        path = Path(target).expanduser()
        if re.fullmatch(r"\d+", target) and not path.exists():
            found.append(_from_job(q(), int(target)))
        elif path.is_dir():
            files = sorted(path.rglob("*.manifest.json"))
            if not files:
                raise FarmError(f"{path} holds no render manifests (*.manifest.json): nothing to review there.",
                                code=2)
            found.extend(_from_file(f) for f in files)
        elif path.is_file() and path.name.endswith(".manifest.json"):
            found.append(_from_file(path))
        elif path.is_file() and path.suffix == ".toml":
            found.append(_from_spec(q(), path))
        elif path.exists():
            raise FarmError(f"{path} is neither a job spec (.toml), a manifest (.manifest.json) nor a folder.", code=2)
        else:
            raise FarmError(f"{target}: no such job id, file or folder.", code=2)
    seen, unique = set(), []
    for m in found:  # a render named twice (by job id and by its spec, say) is shown once
        ident = (m["job"]["id"], m["video"].get("sha256"), m["spec"]["sha256"])
        if ident not in seen:
            seen.add(ident)
            unique.append(m)
    if queue is not None:
        queue.close()
    return unique


def _from_job(queue: Queue, job: int) -> dict:
    cache = Cache(home.cache_dir())
    record = queue.job(job)
    if record is None:
        raise FarmError(f"There is no job {job} in {queue.path}.", code=2)
    beside = manifests.path_for(record["output"])
    if beside.is_file():
        try:
            m = manifests.load(beside)
        except FarmError:
            m = None
        if m is not None and m["job"]["id"] == job and Path(m["video"]["path"]).exists():
            return _from_file(beside)
    # No manifest of this job beside the video (rendered before manifests existed, or the
    # output was rendered again since): rebuild it from the database and the cache.
    m = manifests.build(queue, job, cache)
    video = manifests.video_of(cache, queue.tasks(job))
    out = Path(record["output"])
    if video is None and out.exists() and manifests.file_sha256(out) == m["video"]["sha256"]:
        video = out
    if video is None:
        raise FarmError(f"The video of job {job} is gone: {out} was rendered again or removed since, and the "
                        f"cache no longer holds it. Render its spec again to review it.", code=2)
    m["_files"] = {"video": video, "sheet": None, "manifest": None, "source": "db", "cache": cache}
    return m


def _from_spec(queue: Queue, path: Path) -> dict:
    job = queue.latest_done(str(path.resolve()))
    if job is None:
        raise FarmError(f"{path} has no finished render in {queue.path}: run `farm render {path}` first.", code=2)
    return _from_job(queue, job)


def _from_file(path: Path) -> dict:
    m = manifests.load(path)

    def near(recorded: str | None) -> Path | None:
        # Prefer the file beside the manifest: a folder of renders may have been moved or copied.
        if not recorded:
            return None
        for candidate in (path.parent / Path(recorded).name, Path(recorded)):
            if candidate.exists():
                return candidate
        return None

    video = near(m["video"]["path"])
    if video is None:
        raise FarmError(f"{path}: its video {Path(m['video']['path']).name} is missing.", code=2)
    m["_files"] = {"video": video, "sheet": near(m.get("contact_sheet")), "manifest": path, "source": "file",
                   "cache": Cache(home.cache_dir())}
    return m


# --- what differs -----------------------------------------------------------------------------

SHOWN = ("prompt", "image", "negative_prompt", "model", "mode", "seed", "steps", "guidance", "frames", "retime")


def settings(m: dict) -> dict[str, str]:
    """The settings of a render that a reviewer compares, flattened: `fps`, `keyframe[1].seed`..."""
    out = {}
    for t in m["tasks"]:
        task = tasks.of(t)
        if isinstance(task, tasks.Assemble):
            out.update({"size": f"{task.width}x{task.height}", "fps": f"{task.fps:g}", "codec": task.codec,
                        "quality": "default" if task.quality is None else str(task.quality),
                        "frames": str(task.frames)})
            continue
        for field in SHOWN:  # each kind has the fields it has; a keyframe's "frames" is none of its own
            value = getattr(task, field, None)
            if value is None or field == "frames" and isinstance(task, tasks.Keyframe):
                continue
            if field == "model":
                value = f"{value.name} ({manifests.revision(value.identity)[:12]})"
            elif field == "image":
                value = Path(value).name
            out[f"{t['name']}.{field}"] = str(value)
    return out


def differences(renders: list[dict]) -> dict[str, list[str]]:
    """Settings whose values are not all the same, each with its value per render ("—": absent)."""
    table = [settings(m) for m in renders]
    keys = sorted({k for s in table for k in s}, key=_setting_order)
    return {k: [s.get(k, "—") for s in table] for k in keys if len({s.get(k, "—") for s in table}) > 1}


def _setting_order(key: str):
    m = re.fullmatch(r"(\w+)\[(\d+)\]\.(\w+)", key)
    if not m:
        return (0, "", 0, key)
    return (1, m.group(1), int(m.group(2)), m.group(3))


def axes(renders: list[dict], diff: dict[str, list[str]]) -> list[tuple[str, list[str]]]:
    """Group the differing settings by field (`seed`, `model`...): one axis per field, with each
    render's value on it; settings that always vary together make one axis."""
    fields: dict[str, list[str]] = {}
    for key in diff:
        fields.setdefault(key.rpartition(".")[2], []).append(key)
    out = []
    for field, keys in fields.items():
        values = []
        for i in range(len(renders)):
            seen = [diff[k][i] for k in keys]
            values.append(seen[0] if len(set(seen)) == 1 else ", ".join(seen))
        out.append((field, values))
    # Fields that vary in lockstep (every keyframe seed with every segment seed) are one axis.
    merged: dict[tuple, tuple[str, list[str]]] = {}
    for field, values in out:
        pattern = tuple(values.index(v) for v in values)
        if pattern in merged:
            name, vals = merged[pattern]
            merged[pattern] = (f"{name} + {field}", [f"{a} / {b}" for a, b in zip(vals, values)])
        else:
            merged[pattern] = (field, values)
    return list(merged.values())


def grid(renders: list[dict], ax: list[tuple[str, list[str]]]):
    """(row axis, column axis, cells) when two axes span a full product of values, else None."""
    if len(ax) != 2:
        return None
    (rname, rvals), (cname, cvals) = ax
    rows, cols = list(dict.fromkeys(rvals)), list(dict.fromkeys(cvals))
    cells = {(r, c): i for i, (r, c) in enumerate(zip(rvals, cvals))}
    if len(cells) != len(renders) or len(rows) * len(cols) != len(renders):
        return None
    return (rname, rows), (cname, cols), cells


# --- the page ---------------------------------------------------------------------------------


def write(renders: list[dict], out: str | Path) -> Path:
    """Write `<out>/index.html` and `<out>/media/` for these renders; return the page's path."""
    out = Path(out).resolve()
    try:
        return _write(renders, out)
    except OSError as e:
        raise FarmError(f"Cannot write the review page into {out}: {e.strerror or e} ({e.filename or out}).",
                        code=1) from None


def _write(renders: list[dict], out: Path) -> Path:
    media = out / "media"
    media.mkdir(parents=True, exist_ok=True)
    cards = []
    for m in renders:
        files, job = m["_files"], m["job"]
        stem = f"job{job['id']}-{_slug(job['name'])}"
        video = files["video"]
        codec = m["video"].get("codec") or _codec_of(m)
        if video.is_file() and encode.playable(video, codec):
            shown = _place(video, media / f"{stem}{video.suffix.lower()}")
        else:  # H.265, ProRes, a PNG folder...: a VP9 WebM that browsers play
            shown = media / f"{stem}.preview.webm"
            fps = tasks.of(assembly(m["tasks"])).fps
            encode.preview(video, fps, shown)
        contact = media / f"{stem}.contact.png"
        if files["sheet"] is not None:
            _place(files["sheet"], contact)
        else:
            sheet.write(sheet.draw(m, files["cache"]), contact)
        record = media / f"{stem}.manifest.json"
        manifests.write_json({k: v for k, v in m.items() if not k.startswith("_")}, record)
        cards.append({"m": m, "video": shown.relative_to(out).as_posix(), "sheet": contact.relative_to(out).as_posix(),
                      "manifest": record.relative_to(out).as_posix(),
                      "duration": m["video"].get("frames", 0) / m["video"]["fps"] if m["video"].get("fps") else None})
    page = out / "index.html"
    with atomic_write(page, "w") as f:
        f.write(_html(cards))
    return page


def _codec_of(m: dict) -> str:
    return tasks.of(assembly(m["tasks"])).codec


def _slug(name: str) -> str:
    return re.sub(r"[^\w.-]+", "-", name).strip("-") or "render"


def _place(src: Path, dst: Path) -> Path:
    """Put a copy of src at dst (a hard link when possible: videos can be large), atomically."""
    with atomic_path(dst) as tmp:
        link_or_copy(src, tmp)
    return dst


CSS = """
:root { color-scheme: dark; --bg: #18181b; --card: #27272a; --text: #e4e4e7; --dim: #a1a1aa; --hi: #facc15; }
* { box-sizing: border-box; }
body { margin: 0; padding: 20px; background: var(--bg); color: var(--text);
       font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
h1 { font-size: 20px; margin: 0 0 4px; } h2 { font-size: 16px; margin: 28px 0 10px; }
.sub { color: var(--dim); margin: 0 0 16px; }
button { background: var(--card); color: var(--text); border: 1px solid #3f3f46; border-radius: 6px;
         padding: 6px 12px; font: inherit; cursor: pointer; }
.videos { display: grid; gap: 14px; align-items: start; }
.card { background: var(--card); border-radius: 8px; padding: 10px; }
.card video { width: 100%; display: block; background: #000; border-radius: 4px; }
.card .title { font-weight: 600; margin-top: 8px; } .card .meta { color: var(--dim); font-size: 12px; }
.card a { color: var(--dim); }
.axis { color: var(--hi); font-weight: 600; padding: 4px 2px; }
table { border-collapse: collapse; width: 100%; background: var(--card); border-radius: 8px; overflow: hidden; }
th, td { text-align: left; padding: 6px 10px; border-bottom: 1px solid #3f3f46; vertical-align: top; }
th { color: var(--dim); font-weight: 500; } td.k { font-family: ui-monospace, monospace; color: var(--dim); }
.sheets figure { margin: 0 0 12px; } .sheets img { max-width: 100%; display: block; border-radius: 6px; }
details { margin-top: 24px; color: var(--dim); } pre { white-space: pre-wrap; }
"""

# The page reports each video's state into <pre id=status> (readyState, duration, error), so
# a headless browser's DOM dump can check that every video plays without a debugging protocol.
SCRIPT = """
const videos = [...document.querySelectorAll('video')];
function report() {
  document.getElementById('status').textContent = JSON.stringify(videos.map(v => ({
    src: v.getAttribute('src'), readyState: v.readyState, duration: v.duration,
    error: v.error ? v.error.code : null, paused: v.paused})));
}
for (const v of videos)
  for (const e of ['loadedmetadata', 'loadeddata', 'canplay', 'playing', 'error']) v.addEventListener(e, report);
document.getElementById('sync').addEventListener('click', () => {
  for (const v of videos) { v.currentTime = 0; v.play(); }
});
report();
"""


def _html(cards: list[dict]) -> str:
    e = html.escape
    renders = [c["m"] for c in cards]
    diff = differences(renders)
    ax = axes(renders, diff)
    layout = grid(renders, ax)
    label = {i: " · ".join(f"{name} {vals[i]}" for name, vals in ax) for i in range(len(cards))}

    def card(i: int) -> str:
        c, m = cards[i], cards[i]["m"]
        v = {k: e(str(x)) for k, x in m["video"].items()}  # every value escaped: a manifest is input
        return (f'<div class="card"><video src="{e(c["video"])}" muted loop autoplay playsinline controls '
                f'preload="auto"></video><div class="title">{e(m["job"]["name"])} · job {e(str(m["job"]["id"]))}</div>'
                f'<div class="meta">{e(label[i]) or "&nbsp;"}</div>'
                f'<div class="meta">{v.get("frames", "?")} frames · {v.get("fps") or "?"} fps · '
                f'{v.get("width", "?")}x{v.get("height", "?")} · {v.get("codec", "")} · '
                f'<a href="{e(c["manifest"])}">manifest</a></div></div>')

    if layout:
        (rname, rows), (cname, cols), cells = layout
        parts = [f'<div class="videos" style="grid-template-columns: auto repeat({len(cols)}, minmax(160px, 420px))">',
                 f'<div class="axis">{e(rname)} \\ {e(cname)}</div>']
        parts += [f'<div class="axis">{e(c)}</div>' for c in cols]
        for r in rows:
            parts.append(f'<div class="axis">{e(r)}</div>')
            parts += [card(cells[(r, c)]) for c in cols]
        videos = "".join(parts) + "</div>"
    else:
        n = len(cards)
        videos = (f'<div class="videos" style="grid-template-columns: repeat({min(n, 4)}, minmax(160px, 420px))">'
                  + "".join(card(i) for i in range(n)) + "</div>")

    if diff:
        head = "".join(f"<th>job {e(str(m['job']['id']))}</th>" for m in renders)
        rows_html = "".join(f'<tr><td class="k">{e(k)}</td>' + "".join(f"<td>{e(v)}</td>" for v in vals) + "</tr>"
                            for k, vals in diff.items())
        table = f"<table><tr><th>setting</th>{head}</tr>{rows_html}</table>"
    else:
        table = '<p class="sub">No setting differs between these renders.</p>'
    sheets = "".join(f'<figure><img src="{e(c["sheet"])}" alt="contact sheet of job {e(str(c["m"]["job"]["id"]))}">'
                     f"</figure>" for c in cards)
    names = ", ".join(dict.fromkeys(m["job"]["name"] for m in renders))
    jobs = ", ".join(str(m["job"]["id"]) for m in renders)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>farm review: {e(names)}</title><style>{CSS}</style></head>
<body>
<h1>Review: {e(names)}</h1>
<p class="sub">{len(cards)} render{'s' if len(cards) != 1 else ''} · jobs {e(jobs)}
 · <button id="sync" type="button">Play all from the start</button></p>
{videos}
<h2>Settings that differ</h2>
{table}
<h2>Contact sheets</h2>
<div class="sheets">{sheets}</div>
<details><summary>Playback status</summary><pre id="status">[]</pre></details>
<script>{SCRIPT}</script>
</body></html>
"""


# --- serving ----------------------------------------------------------------------------------


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files, quietly, with single byte ranges: browsers seek in videos with them
    (SimpleHTTPRequestHandler alone answers every request with the whole file).

    Only regular files inside the folder are served: no listings, no symlink that leads out
    of it, and only to requests addressed to this machine by name (a Host header other than
    127.0.0.1, localhost or [::1] is refused: DNS rebinding)."""

    HOSTS = ("127.0.0.1", "localhost", "[::1]")

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def _allowed(self) -> Path | None:
        host = (self.headers.get("Host") or "").strip().lower()
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name not in self.HOSTS:
            self.send_error(403, "Forbidden host")
            return None
        root = Path(self.directory).resolve()
        if self.path.split("?", 1)[0] in ("", "/"):
            self.path = "/index.html"
        path = Path(self.translate_path(self.path))
        try:
            real = path.resolve(strict=True)
        except (OSError, RuntimeError):
            real = None
        if real is None or not real.is_relative_to(root) or not real.is_file():
            self.send_error(404, "Not found")
            return None
        return path

    def send_head(self):
        path = self._allowed()
        if path is None:
            return None
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", rng.strip()) if rng else None
        if m is None or not path.is_file() or m.group(1) == m.group(2) == "":
            return super().send_head()
        size = path.stat().st_size
        start = int(m.group(1)) if m.group(1) else max(0, size - int(m.group(2)))
        end = min(int(m.group(2)), size - 1) if m.group(1) and m.group(2) else size - 1
        if start >= size or start > end:
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.end_headers()
            return None
        f = open(path, "rb")
        f.seek(start)
        self.send_response(206)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        self._left = end - start + 1
        return f

    def copyfile(self, source, outputfile):
        left = getattr(self, "_left", None)
        if left is None:
            return super().copyfile(source, outputfile)
        while left > 0:
            chunk = source.read(min(left, 1 << 16))
            if not chunk:
                break
            outputfile.write(chunk)
            left -= len(chunk)
        self._left = None


def server(folder: str | Path, port: int = 0, host: str = "127.0.0.1") -> http.server.ThreadingHTTPServer:
    """An HTTP server for a review folder (port 0: any free port; read it from server_address).
    Call `serve_forever()` on it, or run it in a thread."""
    handler = partial(_Handler, directory=str(Path(folder).resolve()))
    try:
        return http.server.ThreadingHTTPServer((host, port), handler)
    except OSError as e:
        raise FarmError(f"Cannot serve on {host}:{port}: {e.strerror or e}.", code=2) from None


def url(srv) -> str:
    host, port = srv.server_address[:2]
    return f"http://{host}:{port}/index.html"
