"""farm: a single-node render farm for generative media.

spec (TOML) -> plan (task graph) -> queue (SQLite) -> worker -> pipeline -> assembly (ffmpeg).
Each stage is the module of that name; `farm.render.render()` runs them all for one spec.
"""

__version__ = "0.1.0"

import logging as _logging

from .errors import FarmError, SpecError  # noqa: E402

# torchao (the quantization backend; diffusers imports it whenever it is installed) warns at import
# that its CUDA-only extensions do not load on a CPU machine, and torch that torchao's enums need no
# registering: noise on every command, not a problem of the render. Real torchao errors still show.
for _name in ("torchao", "torch.utils._pytree"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

__all__ = ["FarmError", "SpecError", "__version__", "accelerate"]


def __getattr__(name):
    if name == "accelerate":  # `farm.accelerate(pipe, ...)`: the function, imported on first use
        from .acceleration import accelerate

        return accelerate
    raise AttributeError(f"module 'farm' has no attribute {name!r}")
