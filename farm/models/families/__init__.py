"""Model families: one module per family, each one `Family` holding all farm knows of it.

Like ComfyUI's `supported_models.py`, a family declares its diffusers pipeline class and role,
how it is conditioned on keyframes (and the adapter that turns them into call arguments), its
time (frame rule, native rate, window), its size rules (read from the denoiser's own config),
its memory rule for farm/models/fit.py, its denoiser components (placement, quantization) and its
tiny twin. `FAMILIES` is the registry, the `FAMILY` of every module in this package: the rest
of farm asks it (`family()`, `of_index()`, `of_pipe()`, `of_twin()`, `roles()`) and never names a
family itself. Adding a family is one module here (its twin's builder included) and a preset
(plus its twin's preset, `tiny-*`); the components several twins share are in farm/models/twins.py.
Families that share a pipeline class are told apart by the components a model holds
(`requires`) and by its pipeline's own config (`requires_config`, read from model_index.json
or a loaded pipeline); a preset whose weights are not here is of its twin's family.

Nothing here imports torch or diffusers at import time: spec validation and planning read
families without loading a model library (adapters and twin builders import them when called).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable, Mapping

from .family import CONDITIONING, ROLES, Family, Memory, Shape, Time, Twin, plain_guidance  # noqa: F401 - the records, here


def _discover() -> tuple[Family, ...]:
    """Every module of this package but `family` holds one family, as `FAMILY`."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "family")
    return tuple(importlib.import_module(f"{__name__}.{name}").FAMILY for name in names)


# The registry: the FAMILY of each module here (a new family is a new module, nothing else).
FAMILIES: tuple[Family, ...] = _discover()


def family(pipeline: str, components: Iterable[str] = (), config: Mapping | None = None) -> Family | None:
    """The family of a pipeline class; where several share a class (Wan 2.1, Wan 2.2 A14B and
    TI2V-5B), the most specific one whose `requires` the model's components hold and whose
    `requires_config` its pipeline config (`config`: model_index.json's settings, or a loaded
    pipeline's `config`) matches, else the plain one."""
    components, config = set(components), config or {}

    def fits(f: Family) -> bool:
        return (f.pipeline == pipeline and set(f.requires) <= components
                and all(config.get(k) == v for k, v in f.requires_config.items()))

    candidates = [f for f in FAMILIES if fits(f)]
    return max(candidates, key=lambda f: len(f.requires) + len(f.requires_config), default=None)


def of_index(pipeline: str, index: Mapping) -> Family | None:
    """The family of a model from its model_index.json: its components (the entries naming a
    class) and its pipeline's own settings (the others, `_class_name` and the like aside)."""
    components = [k for k, v in index.items() if isinstance(v, list) and v and v[0]]
    return family(pipeline, components, index_config(index))


def index_config(index: Mapping) -> dict:
    """A model_index.json's pipeline settings: its entries that name no component, `_class_name`
    and the like aside."""
    return {k: v for k, v in index.items() if not k.startswith("_") and not isinstance(v, list)}


def of_pipe(pipeline: str, pipe) -> Family | None:
    """The family of a loaded pipeline: the components it holds and its `config`."""
    parts = [k for k, v in getattr(pipe, "components", {}).items() if v is not None]
    return family(pipeline, parts, dict(getattr(pipe, "config", None) or {}))


def of_twin(recipe: str) -> Family | None:
    """The family whose twin is `builtin:<recipe>`."""
    return next((f for f in FAMILIES if f.twin.recipe == recipe), None)


def roles() -> dict[str, str]:
    """Pipeline class -> role, for every class farm drives."""
    return {f.pipeline: f.role for f in FAMILIES}
