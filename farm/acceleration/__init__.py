"""Make a diffusers pipeline faster without per-model code: fused kernels, torch.compile,
the fastest attention backend the device has, and step caching.

`accelerate(pipe, ...)` works on the pipeline's denoiser (`pipe.transformer` or `pipe.unet`):

1. **attention** (`attention.py`): the fastest *exact* backend of diffusers' attention
   dispatcher that this machine can run.
2. **step caching** (`caching.py`): First Block Cache (`cache`) or TaylorSeer (`taylorseer`),
   diffusers' own hooks.
3. **kernels** / **compile** (`rewrite.py`): the denoiser is wrapped in `torch.compile` with
   farm's own backend, which replaces the patterns below in Dynamo's FX graphs with one fused
   op each from `kernels/` (each `kernels/<op>.py` holds its op and the matcher of its
   pattern; `kernels.OPS` is the one list of them). The graph then goes to Inductor
   (`compile=True`) or runs as is (`compile=False`).

   | pattern | graph shape | op |
   | --- | --- | --- |
   | `group_norm_silu` | `silu(group_norm(x))` | GroupNorm + SiLU (UNet resnets) |
   | `adaln` | `norm(x) * (1 + scale) + shift`, norm a layer/RMS norm (also written out as `x * rsqrt(mean(x²) + eps)`), scale per sample or per token, or `(1 + scale)[:, None]` | AdaLN modulation (DiT blocks) |
   | `gated_residual` | `x + y * gate`, gate broadcast over tokens | gated residual (DiT blocks) |
   | `rmsnorm_rope` | `rms_norm(q)` then interleaved rotary embedding | q/k norm + RoPE (Wan) |
   | `glu` | `a * act(b)` with `a, b = p.chunk(2, -1)` | GEGLU / SwiGLU |
   | `gelu` | `gelu(x, approximate="tanh")` | GELU-tanh (DiT MLPs) |

The report says what was chosen and, once the model has run, what was replaced (pattern →
count, summed over the distinct graphs compiled) and how many cached steps were skipped.
`settings.py` holds what specs and presets may ask for and its validation, without torch:
spec, plan and models import it. This package imports torch and diffusers only when a
pipeline is accelerated. `farm accelerate --report` (load a model, accelerate it, draw once)
is `farm/media/probe.py`, above the pipeline stage.
"""  # noqa: E501 - the table's rows are Markdown, one line each

from __future__ import annotations

from ..errors import FarmError
from .report import Report
from .settings import (
    DEFAULT_CACHE_THRESHOLD,
    FEATURES,
    STEP_CACHES,
    TAYLORSEER_INTERVAL,
    TAYLORSEER_WARMUP,
    check_features,
    check_threshold,
)

__all__ = ["DEFAULT_CACHE_THRESHOLD", "FEATURES", "STEP_CACHES", "TAYLORSEER_INTERVAL", "TAYLORSEER_WARMUP",
           "FarmError", "Report", "accelerate", "check_features", "check_threshold", "denoiser", "reset"]


def denoiser(pipe):
    for name in ("transformer", "unet"):
        module = getattr(pipe, name, None)
        if module is not None:
            return module
    raise FarmError(f"{type(pipe).__name__} has neither a `transformer` nor a `unet` to accelerate.", code=2)


def accelerate(pipe, features=None, *, kernels: bool = True, compile: bool = True, attention: bool | str = True,
               cache: bool | str = False, cache_threshold: float = DEFAULT_CACHE_THRESHOLD) -> Report:
    """Accelerate `pipe` in place and return a Report (filled in further as the model runs).

    `features` (a spec's list, e.g. ["kernels", "compile"]) overrides the keyword switches.
    `attention` may name a diffusers backend to use instead of choosing one. `cache` is
    False, True / "cache" (First Block Cache) or "taylorseer". `accelerate.reset(pipe)`
    (the same as `reset`) undoes it."""
    if features is not None:
        chosen = check_features(list(features))
        kernels, compile = "kernels" in chosen, "compile" in chosen
        cache = next((f for f in STEP_CACHES if f in chosen), False)
        attention = "attention" in chosen
    model = denoiser(pipe)
    report = Report(model=type(model).__name__, kernels=kernels, compile=compile)
    if attention:
        from . import attention as backends

        backends.choose(model, report, None if attention is True else attention)
    if cache:
        from . import caching

        caching.enable(model, report, "cache" if cache is True else cache, cache_threshold)
    if kernels or compile:
        import torch

        from . import rewrite

        if kernels:
            report.kernel_backend = rewrite.load_kernels().backend()
        model.compile(backend=rewrite.dynamo_backend(report, kernels, compile), fullgraph=False, dynamic=False)
        # Each block class is traced once per input shape; CFG and cache branches add a few.
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    pipe._farm_acceleration = report
    return report


def reset(pipe):
    """Undo `accelerate`: plain forward, default attention, no cache."""
    model = denoiser(pipe)
    model._compiled_call_impl = None
    r = getattr(pipe, "_farm_acceleration", None)
    if r is not None:
        if r.attention:
            from . import attention

            attention.reset(model)
        if r.cache and r.cache.get("supported"):
            model.disable_cache()
        pipe._farm_acceleration = None


accelerate.reset = reset  # `farm.accelerate.reset(pipe)`, as before: a function's attribute, not a module trick
