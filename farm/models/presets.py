"""Preset files (`presets/*.toml`, or `$FARM_PRESETS`): where they are, reading one, and
checking every key it holds (role and pipeline against the families farm drives, defaults,
memory flags, acceleration, a motion model's trained rate and window, quantization).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import tomli

from .. import files
from ..acceleration.settings import check_features, check_threshold
from ..checks import MAX_DEPTH, depth
from ..errors import FarmError
from . import families

# What farm knows of each pipeline class it drives (role, conditioning, time, size and memory
# rules, denoisers, twin) is its family's: farm/models/families/.
ROLES = {"keyframes": "text-to-image", "motion": "image-to-video", "upscale": "upscale"}

# Preset keys, and the [defaults] keys that are not pipeline-call options (every other
# [defaults] key, like `max_sequence_length`, is passed to the pipeline call).
PRESET_KEYS = ("description", "role", "pipeline", "source", "revision", "twin", "config", "component",
               "trust_remote_code",
               "defaults", "options", "memory", "accelerate", "cache_threshold", "fps", "max_frames",
               "quantize", "fit",  # farm/models/fit.py: weights quantized by torchao; what the model needs
               "loras")  # LoRA files on the hub that the preset applies (step-distilled presets)
# A preset LoRA: a file of a hub repo at a revision, its scale, and the denoiser it loads into
# (one of its family's `denoisers`; Wan 2.2's `transformer_2` is its low-noise expert).
LORA_KEYS = ("repo", "file", "revision", "scale", "into")

# `accelerate` and `cache_threshold` (farm/acceleration/settings.py) are kept in a ModelRef's defaults but
# are not call options either: plan._model puts them in task keys on their own.
# `fps` and `max_frames` (a motion model's trained frame rate and window, farm/models/timing.py) too, and `quantize`.
NOT_CALL_OPTIONS = ("steps", "guidance", "dtype", "size", "scheduler", "accelerate", "cache_threshold", "fps",
                    "max_frames", "quantize")
MEMORY_KEYS = ("cpu_offload", "vae_tiling", "vae_slicing")


def presets_dir() -> Path:
    env = os.environ.get("FARM_PRESETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent  # farm/
    for candidate in (here / "presets", here.parent / "presets"):  # installed wheel, source checkout
        if candidate.is_dir():
            return candidate
    return here.parent / "presets"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


# The shipped presets are under 2 KB each; 1 MiB bounds what a stray file in FARM_PRESETS costs.
MAX_PRESET_BYTES = 1 << 20


def load_preset(name: str) -> dict:
    path = presets_dir() / f"{name}.toml"
    try:
        data = tomli.loads(files.read_regular(path, MAX_PRESET_BYTES, "a preset").decode("utf-8"))
    except (tomli.TOMLDecodeError, UnicodeDecodeError) as e:
        raise FarmError(f"The preset file {path} is not valid TOML: {e}", code=2) from None
    except OSError as e:
        raise FarmError(f"Cannot read the preset file {path} ({e.strerror or e}).", code=2) from None
    except RecursionError:  # tomli's limit on nesting (400 levels)
        data = None
    if data is None or depth(data) > MAX_DEPTH:
        raise FarmError(f"The preset file {path} nests tables and lists more than {MAX_DEPTH} levels deep.", code=2)
    for key in ("role", "pipeline", "source"):
        if key not in data:
            raise FarmError(f"The preset file {path} lacks the key `{key}`.", code=2)
        if not isinstance(data[key], str) or not data[key]:
            raise FarmError(f"The preset file {path}: `{key}` must be a non-empty string.", code=2)
    unknown = [k for k in data if k not in PRESET_KEYS]
    if unknown:
        raise FarmError(f"The preset file {path} has unknown keys: {', '.join(unknown)} "
                        f"(allowed: {', '.join(PRESET_KEYS)}).", code=2)
    if data["role"] not in ROLES:
        raise FarmError(f"The preset file {path}: role {data['role']!r} is not one of {', '.join(ROLES)}.", code=2)
    if data["role"] == "upscale" or families.roles().get(data["pipeline"]) != data["role"]:
        raise FarmError(f"The preset file {path}: farm cannot drive a {data['pipeline']} as a {data['role']} "
                        f"model (it drives: {_drivable()}).", code=2)
    if not isinstance(data.get("trust_remote_code", False), bool):
        raise FarmError(f"The preset file {path}: trust_remote_code must be true or false.", code=2)
    from ..checks import Checker, fit_table, preset_defaults

    c = Checker(path)
    preset_defaults(c, data.get("defaults", {}), "defaults.")
    fit_table(c, data.get("fit", {}), "fit.")
    if not isinstance(data.get("options", {}), dict):
        c.fail("options", "expected a table of pipeline call arguments")
    if "loras" in data:
        _check_loras(c, data, path)
    if c.problems:
        raise FarmError(f"The preset file {path} has {len(c.problems)} problem{'s' if len(c.problems) > 1 else ''}: "
                        + "; ".join(c.problems) + ".", code=2)
    data["defaults"] = {**data.get("defaults", {}), **data.get("options", {})}
    return data


def _check_loras(c, data: dict, path: Path):
    """A preset's `loras = [{ repo, file, revision, scale, into }]`: each a .safetensors file of
    a hub repo, at a revision (default: the repo's main branch), loaded into one of the denoisers
    of the preset's family (default: the one `load_lora_weights` picks, the first)."""
    from ..checks import HUB_REPO, shown

    value = data["loras"]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        c.fail("loras", f"expected a list of tables like {{ repo = \"org/name\", file = \"x.safetensors\" }}, "
                        f"got {shown(value)}")
        return
    denoisers = None
    for i, lo in enumerate(value):
        key = f"loras[{i}]."
        c.keys(lo, LORA_KEYS, key)
        for part in ("repo", "file"):
            if part not in lo:
                c.fail(key + part, "missing: " + ("the hub repo that holds the LoRA (org/name)" if part == "repo"
                                                  else "the LoRA's .safetensors file in that repo"))
        repo, file = c.string(lo, "repo", key), c.string(lo, "file", key)
        if repo is not None and not re.fullmatch(HUB_REPO, repo):
            c.fail(key + "repo", f"expected a hub repo id like org/name (the revision goes in `revision`), "
                                 f"got {shown(repo)}")
        if file is not None and (not file.endswith(".safetensors") or file.startswith("/")
                                 or ".." in file.split("/")):
            c.fail(key + "file", f"expected a .safetensors file inside the repo (pickled .bin/.pt files can run "
                                 f"code), got {shown(file)}")
        c.string(lo, "revision", key)
        c.number(lo, "scale", key, -10, 10)
        into = c.string(lo, "into", key)
        if into is not None:
            denoisers = denoisers if denoisers is not None else _denoisers(data, path)
            if denoisers and into not in denoisers:
                c.fail(key + "into", f"{shown(into)} is not a denoiser of this preset's family "
                                     f"({', '.join(denoisers)})")


def _denoisers(data: dict, path: Path) -> tuple[str, ...]:
    """The denoiser components of a preset's family, as `preset_family` finds it, while the
    preset is being read: its twin is read from the file beside it (a preset's name, never a
    path; an unreadable twin is the twin's own error to report)."""
    twin = None
    if not data["source"].startswith("builtin:") and isinstance(data.get("twin"), str) \
            and re.fullmatch(r"[\w][\w.-]*", data["twin"]):
        try:
            twin = tomli.loads(files.read_regular(path.parent / f"{data['twin']}.toml", MAX_PRESET_BYTES,
                                                  "a preset").decode("utf-8")).get("source")
        except (OSError, UnicodeDecodeError, tomli.TOMLDecodeError, RecursionError, FarmError):
            pass
    fit = data.get("fit") if isinstance(data.get("fit"), dict) else {}
    family = _family_of(data["pipeline"], data["source"], twin, fit.get("params"))
    return family.denoisers if family else ()


def preset_family(preset: dict) -> families.Family | None:
    """The family of a preset's model where its weights are not read (not on this machine): see
    `_family_of`."""
    twin = preset.get("twin")
    twin_source = load_preset(twin)["source"] if twin and twin in preset_names() else None
    return _family_of(preset["pipeline"], preset["source"], twin_source, preset.get("fit", {}).get("params"))


def _family_of(pipeline: str, source: str, twin_source, params) -> families.Family | None:
    """A built-in model's family, else its twin's (the built-in miniature of its family, so Wan
    2.2 TI2V-5B, which shares Wan 2.1's class and components, is told apart without its
    model_index.json), when it is of the preset's pipeline class; else the class's, told apart
    by the components its [fit] table names (`transformer_2`: Wan 2.2)."""
    for src in (source, twin_source):
        if isinstance(src, str) and src.startswith("builtin:"):
            found = families.of_twin(src.split(":", 1)[1])
            if found is not None and found.pipeline == pipeline:
                return found
    return families.family(pipeline, params if isinstance(params, dict) else {})


def preset_defaults(name: str, preset: dict) -> dict:
    """A preset's [defaults], plus its `accelerate = [...]` and `cache_threshold` (validated)."""

    defaults = dict(preset.get("defaults", {}))
    if "accelerate" in preset:
        defaults["accelerate"] = check_features(preset["accelerate"], f"preset {name!r}: accelerate")
    if "cache_threshold" in preset:
        defaults["cache_threshold"] = check_threshold(preset["cache_threshold"], f"preset {name!r}: cache_threshold")
    defaults.update(_preset_time(name, preset))
    if "quantize" in preset:
        defaults["quantize"] = check_quantize_name(preset["quantize"], f"preset {name!r}: quantize")
    return defaults


def _preset_time(name: str, preset: dict) -> dict:
    """A motion preset's `fps` (the rate its model was trained at) and `max_frames` (its window)."""
    out = {}
    for key, integer, hi in (("fps", False, 240), ("max_frames", True, 10_000)):
        if key not in preset:
            continue
        v = preset[key]
        if isinstance(v, bool) or not isinstance(v, int if integer else (int, float)) or not 0 < v <= hi:
            what = "an integer" if integer else "a number"
            raise FarmError(f"Preset {name!r}: {key} must be {what} > 0 and <= {hi}, got {v!r}.", code=2)
        if preset.get("role") != "motion":
            raise FarmError(f"Preset {name!r}: {key} applies to motion models only.", code=2)
        out[key] = v
    return out


def check_quantize_name(value, label: str) -> str:
    """`quantize = "int8"` or `"fp8"` (farm/models/fit.py says what each needs)."""
    from .placement import QUANTIZE

    if value not in QUANTIZE:
        raise FarmError(f"{label}: expected one of {', '.join(repr(q) for q in QUANTIZE)}, got {value!r}", code=2)
    return value


def _drivable() -> str:
    return ", ".join(f"{p} ({role})" for p, role in sorted(families.roles().items()))
