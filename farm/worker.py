"""The worker: claim a task, answer it from the cache or run its handler, report back.

Handlers are looked up by task kind in `HANDLERS`; each writes its output into a fresh
cache folder that is published only when the handler returns. Loaded pipelines stay warm
in the worker between tasks.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import time
from pathlib import Path

from . import encode, models, pipeline
from .cache import Cache
from .errors import FarmError
from .queue import Queue

FRAME = "{:06d}.png"


class Worker:
    def __init__(self, queue: Queue, cache: Cache, *, name: str | None = None, lease: float = 60.0,
                 steps_progress: bool = False, max_warm: int | None = None):
        self.queue = queue
        self.cache = cache
        self.name = name or f"{socket.gethostname()}:{os.getpid()}"
        self.lease = lease
        self.device = models.device()
        self.pipelines: dict[str, object] = {}  # [identity, dtype, scheduler] -> loaded pipeline, oldest use first
        # How many pipelines stay loaded. On a GPU, 2: a keyframe and a motion model, which a
        # sweep over keyframe models still reuses job after job; SDXL (7 GB in fp16) next to
        # Wan 14B (28 GB in bf16) already fills a 40 GB card, so a third would not fit.
        # On the CPU, 8: the twins are a few MB each. `FARM_MAX_WARM` overrides both.
        env = os.environ.get("FARM_MAX_WARM")
        self.max_warm = max_warm or (int(env) if env else (8 if self.device == "cpu" else 2))
        self.steps_progress = steps_progress
        self.calls = {"load": 0, "keyframe": 0, "segment": 0, "assemble": 0}

    # --- the loop -----------------------------------------------------------------------

    def drain(self, job: int | None = None, on_task=None) -> dict:
        """Run claimable tasks (of one job, or any) until none is left; return counts."""
        stats = {"run": 0, "cached": 0}
        while True:
            task = self.queue.claim(self.name, lease=self.lease, job=job, device=self.device)
            if task is None:
                wake = self.queue.next_wakeup(job) if job is not None else None
                if wake is None:
                    return stats
                time.sleep(max(0.0, min(wake - time.time(), 5.0)))  # a retry is backing off
                continue
            cached = self.run(task)
            if cached is not None:
                stats["cached" if cached else "run"] += 1
            if on_task:
                on_task(task, cached)

    def run(self, task: dict) -> bool | None:
        """Answer one claimed task; True if from the cache, False if run, None if it failed."""
        started = time.perf_counter()
        try:
            cached = self.cache.has(task["key"])
            if not cached:
                with self.cache.writing(task["key"]) as out:
                    HANDLERS[task["kind"]](self, task["params"], out)
            if task["kind"] == "assemble":
                self.publish(task)
        except KeyboardInterrupt:
            self.queue.release(task, self.name)
            raise
        except FarmError as e:  # the user's input can't work: retrying would fail the same way
            self.queue.fail(task, self.name, e.message, retry=False)
            return None
        except OSError as e:
            if e.errno == errno.ENOSPC:
                msg = f"disk full while writing {task['name']} ({e.filename or self.cache.root}); free space and render again"
                self.queue.fail(task, self.name, msg, retry=False)
            else:
                self.queue.fail(task, self.name, f"{type(e).__name__}: {e}")
            return None
        except Exception as e:  # noqa: BLE001 - any model or library failure is retried
            self.queue.fail(task, self.name, f"{type(e).__name__}: {e}")
            return None
        self.queue.complete(task, self.name, cached=cached, seconds=time.perf_counter() - started)
        return cached

    # --- helpers ------------------------------------------------------------------------

    def pipe(self, model: dict):
        """The loaded pipeline for a task's model, loading it on first use, with exactly the
        task's LoRAs active (one loaded base model serves every LoRA combination)."""
        warm = json.dumps([model["identity"], model["dtype"], model.get("scheduler")])
        if warm not in self.pipelines:
            while len(self.pipelines) >= self.max_warm:
                self.evict(next(iter(self.pipelines)))
            self.pipelines[warm] = models.load_pipeline(models.ref_from_params(model))
            self.calls["load"] += 1
        pipe = self.pipelines.pop(warm)
        self.pipelines[warm] = pipe  # most recently used last
        models.use_loras(pipe, model.get("loras", []))
        pipe.set_progress_bar_config(disable=not self.steps_progress, leave=False, dynamic_ncols=True)
        return pipe

    def evict(self, warm: str):
        """Unload the least recently used pipeline and give its memory back."""
        import gc

        del self.pipelines[warm]
        gc.collect()
        if self.device == "cuda":
            import torch

            torch.cuda.empty_cache()

    def output(self, key: str) -> Path:
        return self.cache.path(key)

    def frames_of(self, key: str) -> list[Path]:
        return sorted(self.output(key).glob("*.png"))

    def publish(self, task: dict):
        """Copy the assembled output from the cache to the job's output path, atomically."""
        job = self.queue.job(task["job_id"])
        src = next(p for p in self.output(task["key"]).iterdir())
        dst = Path(job["output"])
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():
            encode.encode(sorted(src.glob("*.png")), task["params"]["fps"], "png", None, dst)
            return
        tmp = dst.parent / f".{dst.name}.{os.getpid()}.part"
        try:
            shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
        finally:
            tmp.unlink(missing_ok=True)


# --- handlers: one per task kind ------------------------------------------------------------


def run_keyframe(worker: Worker, params: dict, out: Path):
    if "image" in params:
        from PIL import Image

        with Image.open(params["image"]) as im:
            image = pipeline.fit(im, params["width"], params["height"])
    else:
        image = pipeline.keyframe(worker.pipe(params["model"]), params)
        worker.calls["keyframe"] += 1
    image.save(out / "image.png")


def run_segment(worker: Worker, params: dict, out: Path):
    first = worker.output(params["first"]) / "image.png"
    last = worker.output(params["last"]) / "image.png" if params["last"] else None
    mode = params.get("mode")
    if mode == "hold" or (mode == "crossfade" and last is None):
        encode.hold(first, params["frames"], out)
    elif mode == "crossfade":
        encode.crossfade(first, last, params["frames"], params["fps"], out)
    else:
        from PIL import Image

        with Image.open(first) as a:
            a.load()
            b = None
            if last is not None:
                b = Image.open(last)
                b.load()
            frames = pipeline.segment(worker.pipe(params["model"]), params, a, b)
        worker.calls["segment"] += 1
        for i, frame in enumerate(frames):
            frame.save(out / FRAME.format(i))


def run_assemble(worker: Worker, params: dict, out: Path):
    frames = [f for key in params["segments"] for f in worker.frames_of(key)]
    if len(frames) != params["frames"]:
        raise FarmError(f"assembly expected {params['frames']} frames from its segments, found {len(frames)}")
    dest = out / f"video{params['container']}"
    encode.encode(frames, params["fps"], params["codec"], params["quality"], dest)
    worker.calls["assemble"] += 1


HANDLERS = {"keyframe": run_keyframe, "segment": run_segment, "assemble": run_assemble}
