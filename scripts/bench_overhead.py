"""Overhead of farm over a plain diffusers loop, on the tiny built-in models.

Renders a 10-keyframe shot (10 keyframes + 10 segments + 1 assembly = 21 tasks) twice per
round: once with `farm render` and once with a plain script that makes the same pipeline
calls directly against diffusers, writes the same PNG frames and encodes them with the
same ffmpeg. Both run as fresh processes (imports included) on models already built, with
an empty task cache, each going first in every other round. Prints a table and, last, one
JSON line: {"ratio": ... (of the medians), "best_ratio": ... (of the fastest runs), ...}.
On a shared machine a run can take twice its time (other processes, the page cache); the
fastest runs are the least disturbed, so read both figures. The sides run back to back in each
round, so the median of the rounds' own ratios (`paired_ratio`, with a bootstrap interval)
cancels a drift in the machine's speed that both medians carry.

The plain script does the work farm does (farm/models/timing.py): the Wan twin draws at 16 fps, so
each 1-second segment is 16 frames of motion plus the next keyframe, 17 frames (Wan's 4k+1),
and at a shot rate of 12 (`--fps 12`, the default) they are retimed to 12 frames with
ffmpeg's minterpolate, as farm's default `retime = "interpolate"` does; at `--fps 16` the
first 16 are kept, nothing retimed. (Until 2026-12-01 the plain side asked for 13 frames at
12 fps and retimed nothing: 1.30 at 12 fps and 1.126 at 16 fps measured that difference.)

On a loaded 2-core machine two torch threads per process spin-wait for each other (one
decode of the twin's VAE: 0.8 s idle, 1 to 6 s at load 4); `--threads 1` sets
OMP_NUM_THREADS=1 for both sides, which keeps the comparison fair there.

Since 2026-12-02 farm's CPU runner sets glibc's malloc to keep large freed buffers (farm/allocator.py):
the Wan twin's VAE no longer faults its activations in at every layer, and farm beats the plain
script, which does not. `--tuned-plain` gives the plain script the same setting: that ratio is
farm's own work alone.

    python scripts/bench_overhead.py [--rounds 3] [--fps 12] [--threads N] [--tuned-plain]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FRAMES = 10
MODEL_FPS, NATIVE = 16, 17  # the Wan twin's rate; a 1-second segment's frames at it, next keyframe included
SPEC = """
[shot]
name = "bench"
fps = {fps}
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


def plain(folder: Path, fps: int, tuned: bool = False):
    """What a person writes by hand: load both pipelines, call them, save frames, retime them
    to the shot's rate, encode. `tuned`: with glibc's malloc set as farm's CPU runner sets it
    (farm/allocator.py), so that the ratio is farm's own work alone."""
    if tuned:
        from farm import allocator

        allocator.keep_freed()
    import imageio_ffmpeg
    import torch
    from diffusers import DiffusionPipeline
    from diffusers.utils import logging

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
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    out = folder / "plain"
    out.mkdir()
    n = 0
    for i, key in enumerate(keys):
        last = keys[i + 1] if i + 1 < len(keys) else key
        frames = i2v(image=key, last_image=last, prompt=prompts[i], num_frames=NATIVE, num_inference_steps=8,
                     guidance_scale=5.0, width=128, height=128, generator=torch.Generator().manual_seed(1),
                     output_type="pil", max_sequence_length=64).frames[0]
        if fps == MODEL_FPS:  # the model's own rate: its first `fps` frames are the segment's second
            for f in frames[:fps]:
                f.save(out / f"{n:06d}.png")
                n += 1
            continue
        native = folder / f"native{i}"
        native.mkdir()
        for j, f in enumerate(frames):
            f.save(native / f"{j:06d}.png")
        subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-framerate", str(MODEL_FPS),
                        "-i", str(native / "%06d.png"),
                        "-vf", f"tpad=stop_mode=clone:stop=4,minterpolate=fps={fps}", "-frames:v", str(fps),
                        "-start_number", str(n), str(out / "%06d.png")], check=True)
        n += fps
    assert len(list(out.glob("*.png"))) == n == FRAMES * fps
    subprocess.run([ffmpeg, "-y", "-loglevel", "error", "-framerate", str(fps), "-i",
                    str(out / "%06d.png"), "-c:v", "libx264", "-pix_fmt", "yuv420p", "-crf", "18",
                    str(folder / "plain.mp4")], check=True)


def timed(cmd, env) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fps", type=int, default=12, help="the shot's rate (the model's is 16)")
    ap.add_argument("--threads", type=int, help="OMP_NUM_THREADS for both sides (default: torch's own)")
    ap.add_argument("--tuned-plain", action="store_true",
                    help="the plain side sets glibc's malloc as farm's CPU runner does (farm/allocator.py)")
    ap.add_argument("--plain", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.plain:
        return plain(args.plain, args.fps, args.tuned_plain)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        env = {**os.environ, "FARM_HOME": str(tmp / "home")}
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        spec = tmp / "bench.toml"
        spec.write_text(SPEC.format(fps=args.fps))
        farm = [sys.executable, "-m", "farm.cli", "render", str(spec), "--quiet", "--json"]
        subprocess.run(farm, env=env, check=True, stdout=subprocess.DEVNULL)  # builds the tiny models once
        times = {"farm": [], "plain": []}
        tasks = None
        def run_farm():
            for d in ("cache", "queue.db", "queue.db-wal", "queue.db-shm"):
                subprocess.run(["rm", "-rf", str(tmp / "home" / d)], check=True)
            t = time.perf_counter()
            out = subprocess.run(farm, env=env, check=True, capture_output=True, text=True).stdout
            times["farm"].append(time.perf_counter() - t)
            result = json.loads(out)
            assert result["tasks"]["cached"] == 0
            return result["tasks"]["total"]

        def run_plain():
            work = tmp / "plain-run"
            subprocess.run(["rm", "-rf", str(work)], check=True)
            work.mkdir()
            times["plain"].append(timed([sys.executable, __file__, "--plain", str(work), "--fps", str(args.fps)]
                                        + ["--tuned-plain"] * args.tuned_plain, env))

        for i in range(args.rounds):  # each side goes first in every other round: a drift in load hits both
            if i % 2:
                run_plain()
                tasks = run_farm()
            else:
                tasks = run_farm()
                run_plain()
    farm_s, plain_s = statistics.median(times["farm"]), statistics.median(times["plain"])
    best = min(times["farm"]) / min(times["plain"])
    # Each round ran both sides back to back: the ratio within a round cancels a drift in the
    # machine's speed that the medians of the two sides do not. The interval is a bootstrap
    # of those rounds (90%, seeded): how far the noise lets the median ratio move.
    paired = [f / p for f, p in zip(times["farm"], times["plain"])]
    draws = random.Random(0)
    boot = sorted(statistics.median(draws.choices(paired, k=len(paired))) for _ in range(2000))
    low, high = boot[100], boot[1899]
    print(f"{'':8}{'median s':>10}{'best s':>9}   runs")
    for k in ("farm", "plain"):
        print(f"{k:8}{statistics.median(times[k]):>10.2f}{min(times[k]):>9.2f}   "
              f"{'  '.join(f'{x:.2f}' for x in times[k])}")
    print(f"ratio farm/plain: {farm_s / plain_s:.3f} of the medians, {best:.3f} of the best runs, over {tasks} tasks "
          f"at {args.fps} fps ({args.rounds} rounds, each a fresh process; threads: {args.threads or 'default'}; "
          f"load {os.getloadavg()[0]:.1f}; plain's malloc {'tuned as farm' if args.tuned_plain else 'glibc default'})")
    print(f"paired: median of the rounds' ratios {statistics.median(paired):.3f} "
          f"(90% bootstrap interval {low:.3f} to {high:.3f}); rounds: {'  '.join(f'{r:.3f}' for r in paired)}")
    print(json.dumps({"ratio": round(farm_s / plain_s, 4), "best_ratio": round(best, 4),
                      "paired_ratio": round(statistics.median(paired), 4),
                      "paired_interval": [round(low, 4), round(high, 4)],
                      "tasks": tasks,
                      "farm_s": round(farm_s, 3), "plain_s": round(plain_s, 3), "fps": args.fps,
                      "threads": args.threads, "tuned_plain": args.tuned_plain}))


if __name__ == "__main__":
    main()
