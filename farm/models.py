"""Models: resolve what a spec names into a `ModelRef`, and load it as a diffusers pipeline.

A spec names a model as a preset (`presets/*.toml`), a local diffusers folder, a hub id
(`org/name`, optionally `@revision`, taken from the local Hugging Face cache), or one of
the ffmpeg-only motion modes `hold` / `crossfade`. Every `ModelRef` carries an `identity`
(source plus revision or content digest) that goes into task keys, so swapping a model
re-renders exactly the tasks that use it.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tomli

from . import home, tiny
from .errors import FarmError

FFMPEG_MOTION = ("hold", "crossfade")

# Pipeline classes farm knows how to call, by role. `frames` is the frame-count rule of
# the family (Wan generates 4k+1 frames); `last_frame` says whether it takes an end frame;
# `multiple_of` is the side length granularity (VAE scale times patch size).
PIPELINES = {
    "StableDiffusionPipeline": {"role": "keyframes", "multiple_of": 8},
    "StableDiffusionXLPipeline": {"role": "keyframes", "multiple_of": 8},
    "StableDiffusion3Pipeline": {"role": "keyframes", "multiple_of": 16},
    "FluxPipeline": {"role": "keyframes", "multiple_of": 16},
    "WanImageToVideoPipeline": {"role": "motion", "multiple_of": 16, "frames": (4, 1), "last_frame": True},
}


def presets_dir() -> Path:
    env = os.environ.get("FARM_PRESETS")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    for candidate in (here / "presets", here.parent / "presets"):  # installed wheel, source checkout
        if candidate.is_dir():
            return candidate
    return here.parent / "presets"


@dataclass(frozen=True)
class ModelRef:
    name: str  # as the user wrote it
    role: str  # "keyframes" or "motion"
    pipeline: str  # diffusers pipeline class name, or "ffmpeg"
    source: str  # builtin:<recipe>, a folder, a hub id, or an ffmpeg mode
    identity: str  # what task keys hash: source plus revision or content digest
    revision: str | None = None
    defaults: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def is_ffmpeg(self) -> bool:
        return self.pipeline == "ffmpeg"


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


def load_preset(name: str) -> dict:
    path = presets_dir() / f"{name}.toml"
    try:
        with open(path, "rb") as f:
            data = tomli.load(f)
    except tomli.TOMLDecodeError as e:
        raise FarmError(f"The preset file {path} is not valid TOML: {e}", code=2) from None
    for key in ("role", "pipeline", "source"):
        if key not in data:
            raise FarmError(f"The preset file {path} lacks the key `{key}`.", code=2)
    return data


def preset_defaults(name: str, preset: dict) -> dict:
    """A preset's [defaults], plus its `accelerate = [...]` and `cache_threshold` (validated)."""
    from .accelerate import check_features, check_threshold

    defaults = dict(preset.get("defaults", {}))
    if "accelerate" in preset:
        defaults["accelerate"] = check_features(preset["accelerate"], f"preset {name!r}: accelerate")
    if "cache_threshold" in preset:
        defaults["cache_threshold"] = check_threshold(preset["cache_threshold"], f"preset {name!r}: cache_threshold")
    return defaults


def slot(identity: str, accelerate=None) -> str:
    """What a worker holds a loaded pipeline under: the model, and how it was accelerated (an
    accelerated pipeline is rewired and compiled, so it is not the plain one)."""
    return f"{identity}+{','.join(accelerate)}" if accelerate else identity


def resolve(name: str, base: Path | None = None) -> ModelRef:
    """Turn a model name from a spec into a ModelRef, or raise FarmError saying why not."""
    if name in FFMPEG_MOTION:
        return ModelRef(name, "motion", "ffmpeg", name, f"ffmpeg:{name}")
    if name in preset_names():
        preset = load_preset(name)
        source = preset["source"]
        if source.startswith("builtin:"):
            recipe = source.split(":", 1)[1]
            if recipe not in tiny.BUILDERS:
                raise FarmError(f"Preset {name!r} names an unknown built-in model {source!r}.", code=2)
            identity = f"{source}@recipe{tiny.RECIPE}"
            ref = ModelRef(name, preset["role"], preset["pipeline"], source, identity, None,
                           preset_defaults(name, preset))
        else:
            inner = resolve(source, presets_dir())
            ref = ModelRef(name, preset["role"], preset["pipeline"], inner.source, inner.identity,
                           inner.revision, preset_defaults(name, preset))
        return ref
    path = Path(name).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.exists():
        return _resolve_folder(name, path)
    if re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", name):
        return _resolve_hub(name)
    hint = difflib.get_close_matches(name, preset_names() + list(FFMPEG_MOTION), n=1)
    msg = f"unknown model {name!r}: not a preset ({', '.join(preset_names())}), not `hold` or `crossfade`, "
    msg += "not an existing diffusers folder, and not a hub id of the form org/name"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    raise FarmError(msg, code=2)


def _pipeline_class(model_index: Path) -> str:
    try:
        return json.loads(model_index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError):
        raise FarmError(f"{model_index} is not a diffusers model_index.json with a `_class_name`.", code=2) from None


def _role_of(name: str, pipeline: str) -> str:
    if pipeline not in PIPELINES:
        known = ", ".join(sorted(PIPELINES))
        raise FarmError(f"model {name!r} is a {pipeline}, which farm cannot drive yet (it knows: {known}).", code=2)
    return PIPELINES[pipeline]["role"]


def _resolve_folder(name: str, path: Path) -> ModelRef:
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise FarmError(f"model {name!r}: {path} is not a diffusers model folder (no model_index.json).", code=2)
    pipeline = _pipeline_class(index)
    digest = folder_digest(path)
    return ModelRef(name, _role_of(name, pipeline), pipeline, str(path.resolve()), f"folder:{digest}", digest[:12])


def _resolve_hub(name: str) -> ModelRef:
    from huggingface_hub import try_to_load_from_cache

    repo, _, revision = name.partition("@")
    found = try_to_load_from_cache(repo, "model_index.json", revision=revision or None)
    if not isinstance(found, str):
        from huggingface_hub.constants import HF_HUB_CACHE

        raise FarmError(
            f"model {name!r} is not in the local Hugging Face cache ({HF_HUB_CACHE}), and farm never downloads "
            f"while rendering. Fetch it first with `hf download {repo}"
            + (f" --revision {revision}" if revision else "") + "`, or point the spec at a local folder.",
            code=2,
        )
    snapshot = Path(found).parent
    commit = snapshot.name
    pipeline = _pipeline_class(Path(found))
    return ModelRef(name, _role_of(name, pipeline), pipeline, str(snapshot), f"hub:{repo}@{commit}", commit)


def folder_digest(path: Path) -> str:
    """Digest of a model folder: every file's name and size, small files' bytes, and the
    first and last MiB of large ones (weights run to many GB; hashing them all at every
    render would cost minutes)."""
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        size = f.stat().st_size
        h.update(f"{f.relative_to(path).as_posix()}\0{size}\0".encode())
        with open(f, "rb") as fh:
            if size <= 2 << 20:
                h.update(fh.read())
            else:
                h.update(fh.read(1 << 20))
                fh.seek(-(1 << 20), os.SEEK_END)
                h.update(fh.read())
    return h.hexdigest()


def local_path(ref: ModelRef) -> Path:
    """The folder `from_pretrained` reads; built-in models are built and saved on first use."""
    if not ref.source.startswith("builtin:"):
        return Path(ref.source)
    recipe = ref.source.split(":", 1)[1]
    dest = home.models_dir() / f"{recipe}-recipe{tiny.RECIPE}"
    if not (dest / "model_index.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            tiny.BUILDERS[recipe]().save_pretrained(tmp)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process built it first: theirs is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def load_pipeline(ref: ModelRef, dev: str | None = None):
    """Load a pipeline through diffusers' `from_pretrained`, as for any real model."""
    import torch
    from diffusers import DiffusionPipeline

    dev = dev or device()
    dtype = torch.float32 if dev == "cpu" else getattr(torch, ref.defaults.get("dtype", "bfloat16"))
    path = local_path(ref)
    try:
        pipe = DiffusionPipeline.from_pretrained(path, dtype=dtype, local_files_only=True)
    except (OSError, ValueError) as e:
        raise FarmError(f"Could not load model {ref.name!r} from {path}: {e}") from None
    return pipe.to(dev)


def footprint(ref: ModelRef) -> int:
    """Bytes a loaded model is expected to take: its weight files, plus 20% for buffers and
    activations' workspace (loose, but it only decides when to unload another model)."""
    path = local_path(ref)
    weights = sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.pt")
                  for f in path.rglob(pattern))
    return int(weights * 1.2)


def free_memory(dev: str) -> int:
    """Bytes free on the device: GPU memory from CUDA, else MemAvailable from /proc/meminfo."""
    if dev.startswith("cuda"):
        import torch

        return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 62  # unknown: never unload for lack of memory


def release_memory(dev: str):
    import gc

    gc.collect()
    if dev.startswith("cuda"):
        import torch

        torch.cuda.empty_cache()
