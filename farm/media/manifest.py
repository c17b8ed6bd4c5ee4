"""The manifest: everything needed to reproduce and audit one finished render, as JSON.

It is read out of the queue database once the job is done: the spec's hash, every task with
its key, params (prompts, seeds, model identity and source), timings, worker and device, the
models used with their revisions, and the versions of farm, diffusers, torch and ffmpeg.
Timings and devices belong to this run, not to a task key, so the manifest is written next
to the video (`lighthouse.mp4` -> `lighthouse.manifest.json`) rather than cached, and the
cached video stays byte-identical from one render to the next.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

from .. import __version__, files
from ..errors import FarmError
from ..plan import tasks as task_records
from ..plan.plan import assembly
from ..queue.cache import Cache
from ..queue.digest import file_digest
from ..queue.queue import Queue
from ..spec.outputs import manifest_path, sidecar
from . import encode

FORMAT = 1  # bump when a field changes meaning; readers check it


path_for = manifest_path


def versions() -> dict:
    def dist(name):
        # importlib.metadata, not `import torch`: reading a manifest for review must not
        # cost torch's two-second import. The wheel's version is what `torch.__version__` says.
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return None

    return {"farm": __version__, "diffusers": dist("diffusers"), "torch": dist("torch"),
            "transformers": dist("transformers"), "pillow": dist("pillow"), "ffmpeg": encode.version(),
            "python": platform.python_version(), "platform": platform.platform()}


# An assembly's cache entry: `video.mp4` (or `.mkv`, `.mov`, `.webm`; a `video` folder of PNG
# frames for codec png), written by the worker's `run_assemble`, and VIDEO_INFO beside it: what
# decoding the video found (codec, width, height, fps, frames), checked against the plan when it
# was made, so publishing a cached video never decodes it again.
VIDEO_INFO = "video.json"


def assembled(cache: Cache, assemble: dict) -> tuple[Path, dict | None]:
    """An assembly's video in the cache and its recorded info (None in entries made before
    the info was recorded)."""
    folder = cache.path(assemble["key"])
    try:
        info = json.loads((folder / VIDEO_INFO).read_text())
    except (OSError, ValueError):
        info = None
    return folder / f"video{task_records.of(assemble).container}", info


def video_of(cache: Cache, tasks: list[dict]) -> Path | None:
    """The job's own assembled video (or PNG folder) in the cache: unlike the output path,
    a later render of an edited spec cannot overwrite it."""
    assemble = assembly(tasks)
    if assemble is None or not cache.exists(assemble["key"]):
        return None
    video, _ = assembled(cache, assemble)
    return video if video.exists() else None


def file_sha256(path: Path) -> str | None:
    return file_digest(path) if path.is_file() else None


def build(queue: Queue, job: int, cache: Cache, *, video: dict | None = None) -> dict:
    """The manifest of a finished job, from the database (and the cache for the video's hash).

    `video` is what `encode.probe` said about the output, when the caller already knows."""
    record = queue.job(job)
    if record is None:
        raise FarmError(f"There is no job {job} in {queue.path}.", code=2)
    if record["state"] != "done":
        raise FarmError(f"Job {job} ({record['name']}) is {record['state']}, not done: only a finished render "
                        f"has a manifest.", code=2)
    tasks = queue.tasks(job)
    first_runs = _first_runs(queue, [t["key"] for t in tasks if t["cached"]])
    models: dict[str, dict] = {}
    entries = []
    for t in tasks:
        work = task_records.of(t)
        model = work.model
        if model is not None:
            models.setdefault(model.identity, {
                "name": model.name, "identity": model.identity, "revision": revision(model.identity),
                "source": model.source, "pipeline": model.pipeline, "dtype": model.dtype,
                "tasks": []})["tasks"].append(t["name"])
        entry = {
            "name": t["name"], "kind": t["kind"], "key": t["key"], "state": t["state"],
            "cached": bool(t["cached"]), "attempts": t["attempts"], "worker": t["worker"], "device": t["device"],
            "started_at": t["started_at"], "finished_at": t["finished_at"],
            "seconds": _seconds(t["started_at"], t["finished_at"]), "params": work.to_json(),
        }
        if t["cached"]:
            # Answered from the cache: say where (and on what) its output was first made.
            entry["made_by"] = first_runs.get(t["key"])
        entries.append(entry)

    produced = video_of(cache, tasks)
    out = Path(record["output"])
    info = dict(video or {})
    digest = cache.digest(assembly(tasks)["key"], produced.name) if produced and produced.is_file() else None
    info.update({"path": str(out), "sha256": digest or (file_sha256(produced) if produced else file_sha256(out))})
    return {
        "format": FORMAT,
        "job": {"id": job, "name": record["name"], "state": record["state"], "created_at": record["created_at"],
                "started_at": record["started_at"], "finished_at": record["finished_at"],
                "seconds": _seconds(record["started_at"], record["finished_at"])},
        "spec": {"path": record["spec_path"], "sha256": record["spec_digest"]},
        "video": info,
        "contact_sheet": str(sidecar(out, ".contact.png")),
        "versions": versions(),
        "models": list(models.values()),
        "tasks": entries,
    }


def revision(identity: str) -> str:
    """The revision part of a model identity: `builtin:tiny@recipe1` -> `recipe1`,
    `hub:org/name@<commit>` -> the commit, `folder:<digest>` -> the digest."""
    kind, _, rest = identity.partition(":")
    return rest.rpartition("@")[2] if "@" in rest else rest


def _seconds(a, b):
    return round(b - a, 4) if a is not None and b is not None else None


def _first_runs(queue: Queue, keys: list[str]) -> dict[str, dict]:
    if not keys:
        return {}
    return {key: {"job": t["job_id"], "task": t["name"], "worker": t["worker"], "device": t["device"],
                  "started_at": t["started_at"], "finished_at": t["finished_at"],
                  "seconds": _seconds(t["started_at"], t["finished_at"])}
            for key, t in queue.first_runs(keys).items()}


def write_json(data: dict, path: Path):
    """Write JSON under a temporary name, then rename: a reader never sees half a file."""
    with files.atomic_write(path, "w") as f:
        f.write(json.dumps(data, indent=1, sort_keys=False) + "\n")


def load(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise FarmError(f"{path} is not a readable farm manifest ({e}).", code=2) from None
    if not isinstance(data, dict) or data.get("format") != FORMAT or "tasks" not in data:
        raise FarmError(f"{path} is not a farm manifest of format {FORMAT}.", code=2)
    wrong = [f"{where}.{k}" for where, fields in TYPES.items() for k, types in fields.items()
             if not isinstance(data.get(where), dict) or not _is(data[where].get(k), types)]
    if not isinstance(data["tasks"], list) or not all(isinstance(t, dict) for t in data["tasks"]):
        wrong.append("tasks")
    else:  # each task as farm stored it (any format farm has written): its readers use it typed
        for i, t in enumerate(data["tasks"]):
            try:
                task_records.of(t)
            except (KeyError, ValueError):
                wrong.append(f"tasks[{i}]")
    if wrong:
        raise FarmError(f"{path} is not a valid farm manifest: {', '.join(wrong)} "
                        f"{'has' if len(wrong) == 1 else 'have'} the wrong type.", code=2)
    return data


# What readers rely on, by type (bool is excluded from the numbers: True is not a frame count).
TYPES = {"job": {"id": (int,), "name": (str,)},
         "video": {"path": (str,), "frames": (int, type(None)), "fps": (int, float, type(None)),
                   "width": (int, type(None)), "height": (int, type(None)), "codec": (str, type(None))}}


def _is(value, types) -> bool:
    return isinstance(value, types) and not isinstance(value, bool)


def write_sidecars(queue: Queue, job: int, cache: Cache, *, video: dict | None = None) -> dict:
    """Write the contact sheet and the manifest of a finished job next to its video; return
    their paths. The last step of `publish.publish`, once the job is done (the manifest needs
    the finish time of every task, the assembly's included)."""
    from . import sheet

    data = build(queue, job, cache, video=video)
    contact = Path(data["contact_sheet"])
    sheet.write(sheet.draw(data, cache), contact)
    manifest = path_for(data["video"]["path"])
    write_json(data, manifest)
    return {"contact_sheet": str(contact), "manifest": str(manifest)}

