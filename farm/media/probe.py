"""What `farm accelerate --report MODEL` does: load a model, accelerate it, draw once, report.

It loads and draws, so it sits with the commands, above the pipeline stage; the acceleration
itself (`farm.acceleration`) knows nothing of models or pipelines.
"""

from __future__ import annotations

from PIL import Image

from .. import acceleration, models
from ..errors import FarmError
from ..models import pipeline, timing


def probe(name: str, features=None, *, cache_threshold: float | None = None,
          dev: str | None = None) -> acceleration.Report:
    """Load a model (a preset, folder or hub id), accelerate it with `features` (default: its
    preset's `accelerate` list, else kernels and attention) and run one small denoising call,
    so the report holds what the pass replaced. What `farm accelerate --report` prints."""
    ref = models.resolve(name)
    if ref.is_ffmpeg:
        raise FarmError(f"{name!r} runs ffmpeg, not a model: there is nothing to accelerate.", code=2)
    features = acceleration.check_features(list(features) if features is not None
                                           else ref.defaults.get("accelerate") or ["kernels", "attention"])
    threshold = cache_threshold if cache_threshold is not None else ref.defaults.get(
        "cache_threshold", acceleration.DEFAULT_CACHE_THRESHOLD)
    pipe = models.load_pipeline(ref, dev)
    pipe.set_progress_bar_config(disable=True)
    report = acceleration.accelerate(pipe, features, cache_threshold=threshold)
    sample(pipe, ref)
    return report


def sample(pipe, ref, steps: int = 2) -> list:
    """One small call of a loaded pipeline through farm's own call path (`steps` steps: 2 by
    default, as a step cache decides from the second; a few latent tokens, 8 frames for a video
    model); its images."""
    side = 2 * timing.shape(ref).multiple
    params = {"prompt": "a lighthouse", "negative_prompt": "", "steps": steps, "guidance": 5.0, "width": side,
              "height": side, "seed": 0, "frames": 1 if ref.role == "keyframes" else 8, "fps": 8,
              "model_fps": 8, "model": {"pipeline": ref.pipeline, "options": ref.options()}}
    if ref.role == "keyframes":
        return [pipeline.keyframe(pipe, params)]
    im = Image.new("RGB", (side, side), (90, 120, 200))
    rule = timing.shape(ref)
    frames = rule.offset + rule.step * -(-8 // rule.step)  # the first valid count past 8: 9 for every family
    return pipeline.clip(pipe, params, im, im, frames, 0).frames
