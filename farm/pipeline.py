"""Calling diffusers pipelines: a keyframe from text, a segment between two keyframes.

Each call takes the task's params and returns PIL images. Noise comes from a CPU generator
seeded by the task alone, so a task draws the same pixels whatever ran before it and on
whichever device it runs.

Text-to-image pipelines (SD, SDXL, SD3, Flux) share one call signature. Image-to-video
families differ in how they take their keyframes: `CONDITIONING` holds one small adapter
per pipeline class that turns (first, last) into that family's keyword arguments.
"""

from __future__ import annotations

import math

from PIL import Image, ImageOps

from . import models


def generator(seed: int):
    import torch

    return torch.Generator(device="cpu").manual_seed(seed)


def _steps(on_step) -> dict:
    """`callback_on_step_end` calling `on_step(i)` between denoising steps: where a worker
    whose lease was lost stops (by raising) instead of finishing another attempt's work."""
    if on_step is None:
        return {}

    def callback(pipe, i, t, tensors):
        on_step(i)
        return tensors

    return {"callback_on_step_end": callback}


def keyframe(pipe, params: dict, on_step=None) -> Image.Image:
    """1. encode the prompt, 2. denoise, 3. decode: one text-to-image call."""
    return pipe(
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"] or None,
        num_inference_steps=params["steps"],
        guidance_scale=params["guidance"],
        width=params["width"],
        height=params["height"],
        generator=generator(params["seed"]),
        **_steps(on_step),
        **params["model"]["options"],
    ).images[0]


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Centre-crop to the shot's aspect ratio and resize: a picture standing in for a keyframe."""
    return ImageOps.fit(image.convert("RGB"), (width, height), Image.Resampling.LANCZOS)


def frame_count(pipeline: str, wanted: int) -> int:
    """The smallest frame count >= wanted that the family can generate (Wan: 4k+1)."""
    step, offset = models.PIPELINES[pipeline].get("frames", (1, 0))
    return max(offset + step * math.ceil(max(wanted - offset, 0) / step), wanted, 1 + step)


def _first_last(params, first, last, generated):
    """Wan 2.1 FLF2V / Wan 2.2: `image` and `last_image`."""
    return {"image": first, "last_image": last if last is not None else first}


def _ltx_conditions(params, first, last, generated):
    """LTX-Video: keyframes as conditions at frame indices; 8k+1 frames put the last one on
    a latent frame boundary (index 8k), which the condition pipeline requires."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    end = last if last is not None else first
    return {"conditions": [LTXVideoCondition(image=first, frame_index=0),
                           LTXVideoCondition(image=end, frame_index=generated - 1)],
            "frame_rate": max(1, round(params["fps"]))}  # LTX conditions its motion on the frame rate


def _first_only(params, first, last, generated):
    """CogVideoX: the first frame only; the segment moves away from it, then cuts."""
    return {"image": first}


CONDITIONING = {
    "WanImageToVideoPipeline": _first_last,
    "LTXConditionPipeline": _ltx_conditions,
    "CogVideoXImageToVideoPipeline": _first_only,
}


def segment(pipe, params: dict, first: Image.Image, last: Image.Image | None, on_step=None) -> list[Image.Image]:
    """Fill a segment: generate from the first keyframe towards the next one (when the
    family takes an end frame), then pick the segment's frames evenly from what came out.

    With an end frame, the N frames of the segment are the first N of N + 1 evenly spaced
    samples that end on the next keyframe, which the next segment shows. The last segment
    has no next keyframe: a first/last-frame model then returns to its own keyframe (a
    loop), as such models are conditioned on both ends."""
    n = params["frames"]
    family = params["model"]["pipeline"]
    ends = models.PIPELINES[family].get("last_frame", False)
    generated = frame_count(family, n + 1 if ends else n)
    frames = pipe(
        prompt=params["prompt"],
        negative_prompt=params["negative_prompt"] or None,
        num_frames=generated,
        num_inference_steps=params["steps"],
        guidance_scale=params["guidance"],
        width=params["width"],
        height=params["height"],
        generator=generator(params["seed"]),
        output_type="pil",
        **CONDITIONING[family](params, first, last, generated),
        **_steps(on_step),
        **params["model"]["options"],
    ).frames[0]
    span = n if ends else max(n - 1, 1)
    return [frames[round(i * (len(frames) - 1) / span)] for i in range(n)]
