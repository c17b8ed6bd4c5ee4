"""Models: resolve what a spec names into a `ModelRef`, and load it as a diffusers pipeline.

A spec names a model as a preset (`presets/*.toml`), a local diffusers folder, a hub id
(`org/name`, optionally `@revision`, taken from the local Hugging Face cache), or one of
the ffmpeg-only motion modes `hold` / `crossfade`. Every `ModelRef` carries an `identity`
(source plus revision or content digest) that goes into task keys, so swapping a model
re-renders exactly the tasks that use it.

One module a concern, each importing only those above it in this list:
- `presets`: preset files, read and checked (`load_preset`, `preset_defaults`);
- `hub`: the Hugging Face hub: hub ids, its local cache, downloading (the one place farm
  touches the network);
- `identity`: resolution and identity (`resolve`, `ModelRef`, `local_path`);
- `loading`: `load_pipeline`, `use_loras` (a loaded pipeline's LoRA adapters for one call),
  and the memory helpers;
- `library`: `farm models`: `catalog()`, `describe()`, `pull()`.

Beside them, and not re-exported here: `families/` (one module a family, its twin's builder
included) and `twins.py` (what the twins share), `timing` (each family's frame, rate and size
rules), `fit` (the memory estimate), `placement` (where weights go, quantization) and
`pipeline` (the diffusers calls).

Callers use the names below as `models.<name>`, so a test that monkeypatches one of them
(`load_pipeline`, `free_memory`, ...) on this package replaces what the worker calls.
"""

from .hub import hub_cache, is_hub_id
from .identity import FFMPEG_MOTION, ModelRef, local_path, ref_from_params, resolve
from .library import catalog, describe, pull
from .loading import device, footprint, free_memory, load_pipeline, release_memory, use_loras
from .presets import (
    MAX_PRESET_BYTES,
    MEMORY_KEYS,
    NOT_CALL_OPTIONS,
    PRESET_KEYS,
    ROLES,
    check_quantize_name,
    load_preset,
    preset_defaults,
    preset_family,
    preset_names,
    presets_dir,
)

__all__ = [
    "FFMPEG_MOTION", "MAX_PRESET_BYTES", "MEMORY_KEYS", "NOT_CALL_OPTIONS", "PRESET_KEYS", "ROLES", "ModelRef",
    "catalog", "check_quantize_name", "describe", "device", "footprint", "free_memory", "hub_cache", "is_hub_id",
    "load_pipeline", "load_preset", "local_path", "preset_defaults", "preset_family", "preset_names", "presets_dir",
    "pull",
    "ref_from_params", "release_memory", "resolve", "use_loras",
]
