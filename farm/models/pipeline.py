"""Calling diffusers pipelines: a keyframe from text, a clip of video from its keyframes.

Each call takes the task's params and returns PIL images. Noise comes from a CPU generator
seeded by the task alone, so a task draws the same pixels whatever ran before it and on
whichever device it runs.

Text-to-image pipelines share one call signature but for how guidance and the negative prompt
are passed, which a family may say (`Family.guidance`: Qwen-Image, FLUX.2). Image-to-video
families differ in how they take their keyframes: each family (farm/models/families/) holds the small
adapter that turns (first, last) into its keyword arguments, and the context its call runs in.
"""

from __future__ import annotations

import json
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps

from . import families


def generator(seed: int):
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)


# A test-only hook: hold a task at a denoising step until the test releases it (see `hold`).
# Unset, it costs one environment lookup per pipeline call and changes nothing. It is no part of
# a task's params, so keys and cache entries never depend on it.
HOLD = "FARM_TEST_HOLD"  # a folder: markers are written and the release is looked for there
HOLD_TASKS = "FARM_TEST_HOLD_TASKS"  # hold only tasks whose name starts with this (default: every one)
HOLD_POLL = 0.05  # seconds between looks for the release, each calling `on_step`


def _steps(on_step, params: dict, kind: str) -> dict:
    """`callback_on_step_end` calling `on_step(i)` between denoising steps: where a worker
    whose lease was lost stops (by raising) instead of finishing another attempt's work.
    (`params` and `kind`, "keyframe" or "clip", name the task for the test hook, `hold`.)"""
    folder = os.environ.get(HOLD)
    task = _name(params, kind) if folder else ""
    held = bool(folder) and task.startswith(os.environ.get(HOLD_TASKS, ""))
    if on_step is None and not held:
        return {}

    def callback(pipe, i, t, tensors):
        if on_step is not None:
            on_step(i)
        if held and i == 0:
            hold(Path(folder), task, lambda: on_step(i) if on_step is not None else None)
        return tensors

    return {"callback_on_step_end": callback}


def hold(folder: Path, task: str, check) -> None:
    """The test-only hook. With `FARM_TEST_HOLD=<folder>` in its environment and that folder
    there, a task (one whose name starts with `FARM_TEST_HOLD_TASKS`, when that is set) stops
    after its first denoising step: it writes the marker `<folder>/<task>@<pid>.held` (JSON:
    task, pid; written whole, by a rename) and waits until the file `<folder>/release` exists,
    calling `check` (the worker's `on_step`) every HOLD_POLL seconds meanwhile, so that a lost
    lease, a canceled job, SIGINT and SIGTERM stop a held task as they stop a running one. No
    folder yet: nothing holds (a test arms the hold by making it); `release` there: nothing holds
    any more (a task run again after its worker was killed runs through). Tests use it to catch
    a task in flight without making it slow (tests/conftest.py: `hold`)."""
    release = folder / "release"
    if not folder.is_dir() or release.exists():
        return
    marker = folder / f"{task}@{os.getpid()}.held"
    partial = folder / f".{marker.name}.tmp"
    partial.write_text(json.dumps({"task": task, "pid": os.getpid()}))
    os.replace(partial, marker)
    while not release.exists():
        check()
        time.sleep(HOLD_POLL)


def _name(params: dict, kind: str) -> str:
    """The name farm/plan/plan.py gives the task of a call: `keyframe[i]`, `segment[i]` or
    `segment[i].clip[j]` (for the test hook's markers and its FARM_TEST_HOLD_TASKS)."""
    if kind == "keyframe":
        return f"keyframe[{params.get('frame')}]"
    return f"segment[{params.get('frame')}]" + (f".clip[{params['clip']}]" if "clip" in params else "")


def _family(pipe, params: dict):
    """The family of the pipeline a task runs (its class, told apart by the components it holds
    and its own config)."""
    return families.of_pipe(params["model"]["pipeline"], pipe)


def guidance(family, params: dict) -> dict:
    """The keyword arguments that carry a call's guidance and negative prompt: `guidance_scale`
    and `negative_prompt`, unless the family says otherwise (Qwen-Image's true CFG takes
    `true_cfg_scale`; FLUX.2 takes no negative prompt)."""
    return family.guidance_call(params) if family else families.plain_guidance(params)


def keyframe(pipe, params: dict, on_step=None) -> Image.Image:
    """1. encode the prompt, 2. denoise, 3. decode: one text-to-image call."""
    return pipe(
        prompt=params["prompt"],
        num_inference_steps=params["steps"],
        **guidance(_family(pipe, params), params),
        width=params["width"],
        height=params["height"],
        generator=generator(params["seed"]),
        **_steps(on_step, params, "keyframe"),
        **params["model"]["options"],
    ).images[0]


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop to the shot's aspect ratio and resize: a picture standing in for a keyframe."""
    return ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)


def condition(family, params: dict, first, last, frames: int) -> dict:
    """The keyword arguments that condition one call of `family` on its keyframes (its adapter)."""
    return family.adapter(params, first, last, frames)


@dataclass
class Clip:
    """What one call of a motion model made: every generated frame, and for a family that makes
    sound (`Family.sound`), its soundtrack: (a float array (channels, samples) in [-1, 1], its
    sample rate); None for a silent one."""

    frames: list
    sound: tuple | None = None


def clip(pipe, params: dict, first: Image.Image, last: Image.Image | None, frames: int,
         seed: int, on_step=None) -> Clip:
    """Generate one clip of `frames` frames at the model's rate (farm/models/timing.py chose the
    count: the family's rule, within its window), starting at `first` and, when given (and
    the family takes one), ending at `last`. Returns every generated frame, and the sound the
    call made with them when its family makes sound."""
    family = _family(pipe, params)
    if not family.ends:
        last = None
    with family.around(pipe, last) if family.around else nullcontext():
        made = pipe(
            prompt=params["prompt"],
            num_frames=family.num_frames(frames),  # FramePack is asked in sections (its call_frames)
            num_inference_steps=params["steps"],
            **guidance(family, params),
            width=params["width"],
            height=params["height"],
            generator=generator(seed),
            output_type="pil",
            **condition(family, params, first, last, frames),
            **_steps(on_step, params, "clip"),
            **params["model"]["options"],
        )
    sound = family.sound(pipe, made) if family.sound is not None else None
    out = made.frames[0]
    if len(out) != frames:
        from ..errors import FarmError

        raise FarmError(f"{type(pipe).__name__} returned {len(out)} frames where {frames} were asked: farm's frame "
                        f"rule for {family.name} (farm/models/families/) does not match the model; please report it")
    return Clip(list(out), sound)
