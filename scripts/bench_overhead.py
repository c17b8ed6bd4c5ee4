"""Overhead of farm over a plain diffusers loop, on the tiny built-in models.

Renders a 10-keyframe shot (10 keyframes + 10 segments + 1 assembly = 21 tasks) twice per
round: once with `farm render` and once with a plain script that makes the same pipeline
calls directly against diffusers, writes the same PNG frames and encodes them with the
same ffmpeg. Both run as fresh processes (imports included) on models already built, with
an empty task cache. Prints a table and, last, one JSON line: {"ratio": ..., "tasks": ...}.

    python scripts/bench_overhead.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMES = 10
SPEC = """
[shot]
name = "bench"
fps = 12
size = [128, 128]
seed = 1
out = "bench.mp4"

[keyframes]
model = "tiny"
steps = 8
guidance = 4.5

[motion]
model = "tiny-video"
steps = 8
guidance = 5.0
""" + "".join(f'\n[[frames]]\nprompt = "shot {i}: a lighthouse, take {i}"\nseconds = 1.0\n' for i in range(FRAMES))


def plain(folder: Path):
    """What a person writes by hand: load both pipelines, call them, save frames, encode."""
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

    import imageio_ffmpeg

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    models = Path(os.environ["FARM_HOME"]) / "models"
    t2i = DiffusionPipeline.from_pretrained(models / "text-to-image-recipe1", dtype=torch.float32)
    i2v = DiffusionPipeline.from_pretrained(models / "image-to-video-recipe1", dtype=torch.float32)
    for p in (t2i, i2v):
        p.set_progress_bar_config(disable=True)
    prompts = [f"shot {i}: a lighthouse, take {i}" for i in range(FRAMES)]
    keys = [t2i(prompt=p, num_inference_steps=8, guidance_scale=4.5, width=128, height=128,
                generator=torch.Generator().manual_seed(1)).images[0] for p in prompts]
    out = folder / "plain"
    out.mkdir()
    n = 0
    for i, key in enumerate(keys):
        last = keys[i + 1] if i + 1 < len(keys) else key
        frames = i2v(image=key, last_image=last, prompt=prompts[i], num_frames=13, num_inference_steps=8,
                     guidance_scale=5.0, width=128, height=128, generator=torch.Generator().manual_seed(1),
                     output_type="pil", max_sequence_length=64).frames[0]
        for f in frames[:12]:
            f.save(out / f"{n:06d}.png")
            n += 1
    subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-loglevel", "error", "-framerate", "12", "-i",
                    str(out / "%06d.png"), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
                    str(folder / "plain.mp4")], check=True)


def timed(cmd, env) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        return plain(args.plain)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "FARM_HOME": str(tmp / "home")}
        spec = tmp / "bench.toml"
        spec.write_text(SPEC)
        farm = [sys.executable, "-m", "farm.cli", "render", str(spec), "--quiet", "--json"]
        subprocess.run(farm, env=env, check=True, stdout=subprocess.DEVNULL)  # builds the tiny models once
        times = {"farm": [], "plain": []}
        tasks = None
        for _ in range(args.rounds):
            for d in ("cache", "queue.db", "queue.db-wal", "queue.db-shm"):
                subprocess.run(["rm", "-rf", str(tmp / "home" / d)], check=True)
            t = time.perf_counter()
            out = subprocess.run(farm, env=env, check=True, capture_output=True, text=True).stdout
            times["farm"].append(time.perf_counter() - t)
            result = json.loads(out)
            assert result["tasks"]["cached"] == 0
            tasks = result["tasks"]["total"]
            work = tmp / "plain-run"
            subprocess.run(["rm", "-rf", str(work)], check=True)
            work.mkdir()
            times["plain"].append(timed([sys.executable, __file__, "--plain", str(work)], env))
    farm_s, plain_s = statistics.median(times["farm"]), statistics.median(times["plain"])
    print(f"{'':8}{'median s':>10}{'runs':>30}")
    for k in ("farm", "plain"):
        print(f"{k:8}{statistics.median(times[k]):>10.2f}{'  '.join(f'{x:.2f}' for x in times[k]):>30}")
    print(f"ratio farm/plain: {farm_s / plain_s:.3f} over {tasks} tasks ({args.rounds} rounds, each a fresh process)")
    print(json.dumps({"ratio": round(farm_s / plain_s, 4), "tasks": tasks, "farm_s": round(farm_s, 3),
                      "plain_s": round(plain_s, 3)}))


if __name__ == "__main__":
    main()
