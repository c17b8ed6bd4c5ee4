"""The fastest *exact* attention backend of diffusers' dispatcher that this machine can run.

FlashAttention 3, FlashAttention 2, cuDNN SDPA, PyTorch SDPA, tried in turn. SageAttention
is left out of the automatic choice: it quantises Q and K to int8, so it changes pixels
beyond rounding, and task keys do not record the device.
"""

from __future__ import annotations

import logging

from ..errors import FarmError

# Exact attention backends of diffusers' dispatcher, fastest first on an H100 (FA3 is Hopper
# only; cuDNN SDPA beats PyTorch's flash SDPA on Hopper at head_dim 128).
ATTENTION_ORDER = ("_flash_3", "flash", "_native_cudnn", "native")


def choose(model, report, wanted: str | None):
    """Set the first backend of ATTENTION_ORDER (or `wanted`) that works; record why the others did not."""
    if not hasattr(model, "set_attention_backend"):
        report.attention_skipped["all"] = f"{type(model).__name__} has no diffusers attention dispatcher"
        return
    import torch
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity(logging.ERROR)  # "Attention backends are an experimental feature" on every call
    try:
        for name in ((wanted,) if wanted else ATTENTION_ORDER):
            if name != "native" and not torch.cuda.is_available():
                report.attention_skipped[name] = "no CUDA device"
                continue
            if name == "_flash_3" and torch.cuda.get_device_capability()[0] != 9:
                report.attention_skipped[name] = "FlashAttention 3 needs a Hopper GPU (sm_90)"
                continue
            try:
                model.set_attention_backend(name)
            except (RuntimeError, ValueError, ImportError) as e:
                report.attention_skipped[name] = str(e).split(". ")[0]
                continue
            report.attention = name
            return
    finally:
        dlog.set_verbosity(level)
    if wanted:
        raise FarmError(f"attention backend {wanted!r} is not usable here: {report.attention_skipped[wanted]}", code=2)


def reset(model):
    """Back to diffusers' default backend."""
    if not hasattr(model, "reset_attention_backend"):
        return
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity(logging.ERROR)
    try:
        model.reset_attention_backend()
    finally:
        dlog.set_verbosity(level)
