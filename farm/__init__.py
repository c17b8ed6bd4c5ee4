"""farm: a single-node render farm for generative media.

spec (TOML) -> plan (task graph) -> queue (SQLite) -> worker -> pipeline -> assembly (ffmpeg).
Each stage is the subpackage of that name (the worker is in farm/run/, the pipeline in farm/models/,
assembly in farm/media/); `farm.run.render.render()` runs them all for one spec.
"""

__version__ = "0.1.0"

from .errors import FarmError, SpecError

__all__ = ["FarmError", "SpecError", "__version__", "accelerate"]


def __getattr__(name):
    if name == "accelerate":  # `farm.accelerate(pipe, ...)`: the function, imported on first use
        from .acceleration import accelerate

        return accelerate
    raise AttributeError(f"module 'farm' has no attribute {name!r}")
