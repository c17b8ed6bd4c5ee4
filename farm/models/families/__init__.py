"""Model families: one module per family, each one `Family` holding all farm knows of it.

Like ComfyUI's `supported_models.py`, a family declares its diffusers pipeline class and role,
how it is conditioned on keyframes (and the adapter that turns them into call arguments), its
time (frame rule, native rate, window), its size rules (read from the denoiser's own config),
its memory rule for farm/models/fit.py, its denoiser components (placement, quantization) and its
tiny twin. `FAMILIES` is the registry, the `FAMILY` of every module in this package: the rest
of farm asks it (`family()`, `of_twin()`, `roles()`) and never names a family itself. Adding a
family is one module here (its twin's builder included) and a preset (plus its twin's preset,
`tiny-*`); the components several twins share are in farm/models/twins.py.

Nothing here imports torch or diffusers at import time: spec validation and planning read
families without loading a model library (adapters and twin builders import them when called).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

from .family import CONDITIONING, ROLES, Family, Memory, Shape, Time, Twin, plain_guidance  # noqa: F401 - the records, here


def _discover() -> tuple[Family, ...]:
    """Every module of this package but `family` holds one family, as `FAMILY`."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "family")
    return tuple(importlib.import_module(f"{__name__}.{name}").FAMILY for name in names)


# The registry: the FAMILY of each module here (a new family is a new module, nothing else).
FAMILIES: tuple[Family, ...] = _discover()


def family(pipeline: str, components: Iterable[str] = ()) -> Family | None:
    """The family of a pipeline class; where two share a class (Wan 2.1 and 2.2), the one whose
    `requires` the model's components hold (the most specific), else the plain one."""
    components = set(components)
    candidates = [f for f in FAMILIES if f.pipeline == pipeline and set(f.requires) <= components]
    return max(candidates, key=lambda f: len(f.requires), default=None)


def of_twin(recipe: str) -> Family | None:
    """The family whose twin is `builtin:<recipe>`."""
    return next((f for f in FAMILIES if f.twin.recipe == recipe), None)


def roles() -> dict[str, str]:
    """Pipeline class -> role, for every class farm drives."""
    return {f.pipeline: f.role for f in FAMILIES}
