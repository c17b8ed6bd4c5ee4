"""Calling diffusers pipelines: a keyframe from text, a clip of video from its keyframes.

Each call takes the task's params and returns PIL images. Noise comes from a CPU generator
seeded by the task alone, so a task draws the same pixels whatever ran before it and on
whichever device it runs.

Text-to-image pipelines (SD, SDXL, SD3, Flux) share one call signature. Image-to-video
families differ in how they take their keyframes: each family (farm/families/) holds the small
adapter that turns (first, last) into its keyword arguments, and the context its call runs in.
"""

from __future__ import annotations

from contextlib import nullcontext

from PIL import Image, ImageOps

from . import families


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


def condition(family, params: dict, first, last, frames: int) -> dict:
    """The keyword arguments that condition one call of `family` on its keyframes (its adapter)."""
    return family.adapter(params, first, last, frames)


def clip(pipe, params: dict, first: Image.Image, last: Image.Image | None, frames: int,
         seed: int, on_step=None) -> list[Image.Image]:
    """Generate one clip of `frames` frames at the model's rate (farm/timing.py chose the
    count: the family's rule, within its window), starting at `first` and, when given (and
    the family takes one), ending at `last`. Returns every generated frame."""
    parts = [k for k, v in getattr(pipe, "components", {}).items() if v is not None]
    family = families.family(params["model"]["pipeline"], parts)
    if not family.ends:
        last = None
    with family.around(pipe, last) if family.around else nullcontext():
        out = pipe(
            prompt=params["prompt"],
            negative_prompt=params["negative_prompt"] or None,
            num_frames=frames,
            num_inference_steps=params["steps"],
            guidance_scale=params["guidance"],
            width=params["width"],
            height=params["height"],
            generator=generator(seed),
            output_type="pil",
            **condition(family, params, first, last, frames),
            **_steps(on_step),
            **params["model"]["options"],
        ).frames[0]
    if len(out) != frames:
        from .errors import FarmError

        raise FarmError(f"{type(pipe).__name__} returned {len(out)} frames where {frames} were asked: farm's frame "
                        f"rule for {family.name} (farm/families/) does not match the model; please report it")
    return list(out)
