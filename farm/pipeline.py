"""Calling diffusers pipelines: a keyframe from text, a clip of video from its keyframes.

Each call takes the task's params and returns PIL images. Noise comes from a CPU generator
seeded by the task alone, so a task draws the same pixels whatever ran before it and on
whichever device it runs.

Text-to-image pipelines (SD, SDXL, SD3, Flux) share one call signature. Image-to-video
families differ in how they take their keyframes: `CONDITIONING` holds one small adapter
per pipeline class that turns (first, last) into that family's keyword arguments.
"""

from __future__ import annotations

from contextlib import contextmanager

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


def _first_last(params, first, last, generated):
    """Wan 2.1 FLF2V / Wan 2.2: `image` and `last_image` (none for a clip that runs free)."""
    return {"image": first, "last_image": last}


def _ltx_conditions(params, first, last, generated):
    """LTX-Video: keyframes as conditions at frame indices; 8k+1 frames put the last one on
    a latent frame boundary (index 8k), which the condition pipeline requires."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    conditions = [LTXVideoCondition(image=first, frame_index=0)]
    if last is not None:
        conditions.append(LTXVideoCondition(image=last, frame_index=generated - 1))
    # LTX conditions its motion on the frame rate: the model's rate, at which farm generates.
    return {"conditions": conditions, "frame_rate": max(1, round(params["model_fps"]))}


def _first_only(params, first, last, generated):
    """CogVideoX: the first frame only; the segment moves away from it, then cuts."""
    return {"image": first}


CONDITIONING = {
    "WanImageToVideoPipeline": _first_last,
    "LTXConditionPipeline": _ltx_conditions,
    "CogVideoXImageToVideoPipeline": _first_only,
}


def clip(pipe, params: dict, first: Image.Image, last: Image.Image | None, frames: int,
         seed: int, on_step=None) -> list[Image.Image]:
    """Generate one clip of `frames` frames at the model's rate (farm/timing.py chose the
    count: the family's rule, within its window), starting at `first` and, when given (and
    the family takes one), ending at `last`. Returns every generated frame."""
    family = params["model"]["pipeline"]
    if not models.PIPELINES[family].get("last_frame", False):
        last = None
    with _one_image_twice(pipe, last is None and family == "WanImageToVideoPipeline"):
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
            **CONDITIONING[family](params, first, last, frames),
            **_steps(on_step),
            **params["model"]["options"],
        ).frames[0]
    if len(out) != frames:
        from .errors import FarmError

        raise FarmError(f"{type(pipe).__name__} returned {len(out)} frames where {frames} were asked: farm's frame "
                        f"rule for {family} (farm/timing.py) does not match the model; please report it")
    return list(out)


@contextmanager
def _one_image_twice(pipe, active: bool):
    """Wan 2.1 FLF2V's image embedder takes the CLIP tokens of two pictures (first and last
    frame), and diffusers refuses `image_embeds` next to `image`. A clip with no end frame
    (the first or a middle clip of a chain) is conditioned on its first frame's pixels only,
    and gives its CLIP tokens twice, for the first and for the (absent) last."""
    embedder = getattr(getattr(getattr(pipe, "transformer", None), "condition_embedder", None), "image_embedder", None)
    if not active or getattr(embedder, "pos_embed", None) is None or getattr(pipe, "image_encoder", None) is None:
        yield
        return
    encode = pipe.encode_image

    def twice(image, device=None):
        return encode(image if isinstance(image, list) else [image, image], device)

    pipe.encode_image = twice
    try:
        yield
    finally:
        del pipe.encode_image  # the class's method again
