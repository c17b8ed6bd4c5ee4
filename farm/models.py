"""Models: resolve what a spec names into a `ModelRef`, and load it as a diffusers pipeline.

A spec names a model as a preset (`presets/*.toml`), a local diffusers folder, a hub id
(`org/name`, optionally `@revision`, taken from the local Hugging Face cache), or one of
the ffmpeg-only motion modes `hold` / `crossfade`. A preset may also point at a single-file
checkpoint (`.safetensors` plus a `config` folder). Every `ModelRef` carries an `identity`
(source plus revision or content digest) that goes into task keys, so swapping a model
re-renders exactly the tasks that use it.

`catalog()` lists the presets for `farm models`, `pull()` fetches a preset's weights into
the Hugging Face cache (the one place farm touches the network), and `use_loras()` switches
a loaded pipeline's LoRA adapters for one call.
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import tomli

from . import families, files, home, timing
from .acceleration.settings import check_features, check_threshold
from .checks import MAX_DEPTH, depth, path_problem, shown
from .digest import file_digest, folder_digest
from .errors import FarmError
from .quiet import silence_loaded

FFMPEG_MOTION = ("hold", "crossfade")

# What farm knows of each pipeline class it drives (role, conditioning, time, size and memory
# rules, denoisers, twin) is its family's: farm/families/.
ROLES = {"keyframes": "text-to-image", "motion": "image-to-video", "upscale": "upscale"}

# Preset keys, and the [defaults] keys that are not pipeline-call options (every other
# [defaults] key, like `max_sequence_length`, is passed to the pipeline call).
PRESET_KEYS = ("description", "role", "pipeline", "source", "revision", "twin", "config", "component",
               "trust_remote_code",
               "defaults", "options", "memory", "accelerate", "cache_threshold", "fps", "max_frames",
               "quantize", "fit")  # farm/fit.py: weights quantized by torchao; what the model needs
# `accelerate` and `cache_threshold` (farm/acceleration/settings.py) are kept in a ModelRef's defaults but
# are not call options either: plan._model puts them in task keys on their own.
# `fps` and `max_frames` (a motion model's trained frame rate and window, farm/timing.py) too, and `quantize`.
NOT_CALL_OPTIONS = ("steps", "guidance", "dtype", "size", "scheduler", "accelerate", "cache_threshold", "fps",
                    "max_frames", "quantize")
MEMORY_KEYS = ("cpu_offload", "vae_tiling", "vae_slicing")


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
    memory: dict = field(default_factory=dict, hash=False, compare=False)  # offload, VAE tiling: no pixel change
    config: str | None = None  # a single-file checkpoint's config folder
    component: str | None = None  # set when the file holds only this component (e.g. "transformer")
    trust_remote_code: bool = False  # only a preset that says `trust_remote_code = true` runs a repo's own code

    @property
    def is_ffmpeg(self) -> bool:
        return self.pipeline == "ffmpeg"

    def options(self) -> dict:
        """Extra keyword arguments for every call of the pipeline (part of the task key)."""
        return {k: v for k, v in self.defaults.items() if k not in NOT_CALL_OPTIONS}


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
    from .checks import Checker, fit_table, preset_defaults

    c = Checker(path)
    preset_defaults(c, data.get("defaults", {}), "defaults.")
    fit_table(c, data.get("fit", {}), "fit.")
    if not isinstance(data.get("options", {}), dict):
        c.fail("options", "expected a table of pipeline call arguments")
    if c.problems:
        raise FarmError(f"The preset file {path} has {len(c.problems)} problem{'s' if len(c.problems) > 1 else ''}: "
                        + "; ".join(c.problems) + ".", code=2)
    data["defaults"] = {**data.get("defaults", {}), **data.get("options", {})}
    return data


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
    """`quantize = "int8"` or `"fp8"` (farm/fit.py says what each needs)."""
    from .placement import QUANTIZE

    if value not in QUANTIZE:
        raise FarmError(f"{label}: expected one of {', '.join(repr(q) for q in QUANTIZE)}, got {value!r}", code=2)
    return value


def _drivable() -> str:
    return ", ".join(f"{p} ({role})" for p, role in sorted(families.roles().items()))


def resolve(name: str, base: Path | None = None) -> ModelRef:
    """Turn a model name from a spec into a ModelRef, or raise FarmError saying why not."""
    if name in FFMPEG_MOTION:
        return ModelRef(name, "motion", "ffmpeg", name, f"ffmpeg:{name}")
    if name in preset_names():
        return _resolve_preset(name, load_preset(name))
    if not name or (problem := path_problem(name, base or ".")):
        raise FarmError(f"model {shown(name)}: {problem or 'empty name'}", code=2)
    if name.endswith((".safetensors", ".ckpt")):
        raise FarmError(f"model {name!r}: a single-file checkpoint is named through a preset (`source` = the file, "
                        f"`pipeline`, `config`; see docs/models.md), as its pipeline class and configs cannot be read "
                        f"from the file offline.", code=2)
    path = Path(os.path.expanduser(name))  # Path.expanduser raises on ~nosuchuser
    if base is not None and not path.is_absolute():
        path = base / path
    if path.exists():
        if is_hub_id(name) and not name.startswith(("./", "../", "/", "~")):
            raise FarmError(f"model {name!r} is ambiguous: it is a hub id, and {path} is a folder. Name a local "
                            f"folder with a path (`./{name}`), or move the folder, and farm loads what you meant.",
                            code=2)
        return _resolve_folder(name, path)
    if is_hub_id(name):
        return _resolve_hub(name)
    hint = difflib.get_close_matches(name, preset_names() + list(FFMPEG_MOTION), n=1)
    msg = f"unknown model {name!r}: not a preset ({', '.join(preset_names())}), not `hold` or `crossfade`, "
    msg += "not an existing diffusers folder, and not a hub id of the form org/name"
    if hint:
        msg += f" (did you mean {hint[0]!r}?)"
    raise FarmError(msg, code=2)


def _resolve_preset(name: str, preset: dict) -> ModelRef:
    source, defaults = preset["source"], preset_defaults(name, preset)
    memory = preset.get("memory", {})
    bad = [k for k in memory if k not in MEMORY_KEYS]
    if bad:
        raise FarmError(f"Preset {name!r}: unknown [memory] keys {', '.join(bad)} (allowed: {', '.join(MEMORY_KEYS)}).",
                        code=2)
    extra = {"defaults": defaults, "memory": memory, "trust_remote_code": preset.get("trust_remote_code", False)}
    if source.startswith("builtin:"):
        family = families.of_twin(source.split(":", 1)[1])
        if family is None:
            raise FarmError(f"Preset {name!r} names an unknown built-in model {source!r}.", code=2)
        return ModelRef(name, preset["role"], preset["pipeline"], source, f"{source}@recipe{family.twin.version}", None,
                        **extra)
    if problem := path_problem(source, presets_dir()):
        raise FarmError(f"Preset {name!r}: source: {problem}", code=2)
    if source.endswith(".safetensors"):
        return _resolve_single_file(name, preset, extra)
    hub = f"{source}@{preset['revision']}" if preset.get("revision") and "@" not in source else source
    # The preset's class wins over the one the weights' model_index.json names: LTX-Video's
    # repos name LTXPipeline, whose components LTXConditionPipeline loads as they are.
    folder = Path(os.path.expanduser(source))
    folder = folder if folder.is_absolute() else presets_dir() / folder
    if folder.exists() or not is_hub_id(hub):
        try:
            inner = _resolve_folder(source, folder, preset["pipeline"])
        except FarmError as e:
            raise FarmError(f"Preset {name!r}: {e.message}", code=2) from None
    else:
        inner = _resolve_hub(hub, preset["pipeline"], preset=(name, preset))
    return ModelRef(name, preset["role"], preset["pipeline"], inner.source, inner.identity, inner.revision, **extra)


def _resolve_single_file(name: str, preset: dict, extra: dict) -> ModelRef:
    """A single-file checkpoint with the preset's `config` (a diffusers folder, preset or
    cached hub id holding the pipeline's configs; offline it must be local). The file is a
    whole pipeline (SD/SDXL checkpoints), or with `component = "transformer"` (or "unet")
    only the denoiser, as Flux, Wan and LTX fine-tunes are shared; the rest of the pipeline
    then comes from `config`, so its identity is part of the model's."""
    path = Path(os.path.expanduser(preset["source"]))
    if not path.is_absolute():
        path = presets_dir() / path
    if not path.is_file():
        raise FarmError(f"Preset {name!r}: the checkpoint {path} does not exist.", code=2)
    if not preset.get("config"):
        raise FarmError(f"Preset {name!r}: a single-file checkpoint needs `config`, a diffusers folder (or preset, "
                        f"or cached hub id) with the pipeline's configs; farm does not fetch them.", code=2)
    config = resolve(preset["config"], presets_dir())
    folder = local_path(config)
    component = preset.get("component")
    if component is not None:
        index = files.read_json(folder / "model_index.json")
        if component not in index or not isinstance(index[component], list):
            parts = ", ".join(k for k, v in index.items() if isinstance(v, list) and v[0])
            raise FarmError(f"Preset {name!r}: component {component!r} is not part of {config.name} ({parts}).", code=2)
    digest = file_digest(path)
    return ModelRef(name, preset["role"], preset["pipeline"], str(path.resolve()),
                    f"file:{digest}+{component or 'pipeline'}+config:{config.identity}", digest[:12],
                    config=str(folder), component=component, **extra)




def is_hub_id(name: str) -> bool:
    return re.fullmatch(r"[\w.-]+/[\w.-]+(@[\w./-]+)?", name) is not None


def _pipeline_class(model_index: Path) -> str:
    try:
        return files.read_json(model_index)["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise FarmError(f"{model_index} is not a diffusers model_index.json with a `_class_name`.", code=2) from None


def _role_of(name: str, pipeline: str) -> str:
    roles = families.roles()
    if pipeline not in roles:
        known = ", ".join(sorted(roles))
        raise FarmError(f"model {name!r} is a {pipeline}, which farm cannot drive yet (it knows: {known}).", code=2)
    return roles[pipeline]


def _resolve_folder(name: str, path: Path, pipeline: str | None = None) -> ModelRef:
    index = path / "model_index.json"
    if not path.is_dir() or not index.is_file():
        raise FarmError(f"model {name!r}: {path} is not a diffusers model folder (no model_index.json).", code=2)
    pipeline = pipeline or _pipeline_class(index)
    digest = folder_digest(path)
    return ModelRef(name, _role_of(name, pipeline), pipeline, str(path.resolve()), f"folder:{digest}", digest[:12])


def _resolve_hub(name: str, pipeline: str | None = None, preset: tuple[str, dict] | None = None) -> ModelRef:
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    repo, _, revision = name.partition("@")
    try:
        found = try_to_load_from_cache(repo, "model_index.json", revision=revision or None, cache_dir=hub_cache())
    except HFValidationError as e:  # the hub's own rules for a repo id (at most 96 characters, ...)
        raise FarmError(f"model {shown(name)} is not a valid hub id: {e}", code=2) from None
    if not isinstance(found, str) and preset is not None:
        label, data = preset
        twin = f" To smoke-test the family without weights, use its tiny twin {data['twin']!r}." \
            if data.get("twin") else ""
        raise FarmError(f"model {label!r} ({name}) has no weights on this machine: farm looked in the Hugging Face "
                        f"cache at {hub_cache()} and never downloads while rendering. Fetch them with "
                        f"`farm models pull {label}` where a network is available.{twin}", code=2)
    if not isinstance(found, str):
        raise FarmError(
            f"model {name!r} is not in the local Hugging Face cache ({hub_cache()}), and farm never downloads "
            f"while rendering. Fetch it first with `hf download {repo}"
            + (f" --revision {revision}" if revision else "") + "`, or point the spec at a local folder.",
            code=2,
        )
    snapshot = Path(found).parent
    commit = snapshot.name
    pipeline = pipeline or _pipeline_class(Path(found))
    return ModelRef(name, _role_of(name, pipeline), pipeline, str(snapshot), f"hub:{repo}@{commit}", commit)


def hub_cache() -> str:
    """The Hugging Face cache folder, read now (huggingface_hub reads its variables once, at import)."""
    from huggingface_hub import constants

    env = os.environ.get("HF_HUB_CACHE") or (os.environ.get("HF_HOME") and os.path.join(os.environ["HF_HOME"], "hub"))
    return env or constants.HF_HUB_CACHE


def local_path(ref: ModelRef) -> Path:
    """The folder `from_pretrained` reads; built-in models are built and saved on first use."""
    if not ref.source.startswith("builtin:"):
        return Path(ref.source)
    twin = families.of_twin(ref.source.split(":", 1)[1]).twin
    dest = home.models_dir() / f"{twin.recipe}-recipe{twin.version}"
    if not (dest / "model_index.json").is_file():
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
        try:
            pipe = twin.build()
            silence_loaded()  # the builder imported transformers: no "Writing model shards" bars
            pipe.save_pretrained(tmp)
            try:
                os.rename(tmp, dest)
            except OSError:  # another process built it first: theirs is identical
                pass
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def device() -> str:
    """"cuda" when torch can use a GPU, else "cpu". Where the answer is certain without it
    (a CPU build of torch, a Linux machine with no GPU device node, macOS), torch is not
    imported: a render answered from the cache needs no model (importing torch costs
    about a second, diffusers two more)."""
    if "torch" not in sys.modules and _no_gpu_here():
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _no_gpu_here() -> bool:
    """True when torch.cuda.is_available() is certainly False on this machine."""
    from importlib import metadata

    try:
        if "+cpu" in metadata.version("torch"):
            return True
    except metadata.PackageNotFoundError:
        return False
    if sys.platform == "darwin":
        return True
    if sys.platform.startswith("linux"):  # CUDA needs the NVIDIA driver's nodes (WSL: dxg), ROCm kfd
        return not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/dxg", "/dev/kfd"))
    return False


def load_pipeline(ref: ModelRef, dev: str | None = None, placement: str | None = None):
    """Load a pipeline through diffusers' `from_pretrained` (or `from_single_file` for a
    checkpoint file), as for any real model; never from the network, and with a repo's own
    code only when its preset says `trust_remote_code = true`. `placement` is farm/fit.py's
    choice (on the device, model or sequential offload); without it, the [memory] flags say.
    With `quantize`, the denoiser's weights are quantized by torchao as they load."""
    import diffusers
    import torch
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    silence_loaded()  # `farm` commands ask for quiet before diffusers is imported
    from . import placement as placing

    dev = dev or device()
    dtype = torch.float32 if dev == "cpu" else getattr(torch, ref.defaults.get("dtype", "bfloat16"))
    path = local_path(ref)
    # Task keys name the weights as they were planned: a folder or checkpoint written since (a
    # training run saving into it, say) must not be drawn under that name.
    kind, _, content = ref.identity.partition(":")
    if (kind == "folder" and folder_digest(path) != content
            or kind == "file" and file_digest(path) != content.split("+", 1)[0]):
        raise FarmError(f"model {ref.name!r}: {path} changed after the job was planned; render the spec again to "
                        f"use it as it is now.", code=2)
    quantize = ref.defaults.get("quantize")
    extra = {}
    if quantize:
        placing.check_quantize(quantize, dev, placing.capability(dev), f"model {ref.name!r}")
        if ref.config:
            raise FarmError(f"model {ref.name!r}: quantize is not wired for single-file checkpoints yet; save the "
                            f"pipeline as a diffusers folder (save_pretrained) and point the preset at it.", code=2)
        index = files.read_json(path / "model_index.json")
        held = [k for k, v in index.items() if isinstance(v, list) and v and v[0]]
        parts = [p for p in families.family(ref.pipeline, held).denoisers if p in held]
        extra["quantization_config"] = placing.quantization_config(quantize, parts)
    try:
        if ref.config and ref.component:  # the denoiser from the file, the rest from the config folder
            index = files.read_json(Path(ref.config) / "model_index.json")
            part_cls = getattr(diffusers, index[ref.component][1])
            part = part_cls.from_single_file(str(path), config=ref.config, subfolder=ref.component,
                                             torch_dtype=dtype, local_files_only=True)
            pipe = diffusers.DiffusionPipeline.from_pretrained(ref.config, dtype=dtype, local_files_only=True,
                                                               trust_remote_code=ref.trust_remote_code,
                                                               **{ref.component: part})
        elif ref.config:
            cls = getattr(diffusers, ref.pipeline)
            pipe = cls.from_single_file(str(path), config=ref.config, torch_dtype=dtype, local_files_only=True)
        else:
            cls = getattr(diffusers, ref.pipeline, None) or diffusers.DiffusionPipeline  # the preset's class
            pipe = cls.from_pretrained(path, dtype=dtype, local_files_only=True,
                                       trust_remote_code=ref.trust_remote_code, **extra)
    except (OSError, ValueError, SingleFileComponentError) as e:
        raise FarmError(f"Could not load model {ref.name!r} from {path}: {e}") from None
    if ref.defaults.get("scheduler"):
        name = ref.defaults["scheduler"]
        cls = getattr(diffusers, name, None)
        if cls is None or not hasattr(cls, "from_config"):
            raise FarmError(f"model {ref.name!r}: unknown scheduler {name!r} (a diffusers scheduler class).", code=2)
        pipe.scheduler = cls.from_config(pipe.scheduler.config)
    memory = ref.memory
    vae = getattr(pipe, "vae", None)
    # Tiling and slicing trade speed for memory (a 1024² SDXL decode needs ~10 GB untiled,
    # ~3 GB tiled); tiles are blended, so pixels can differ slightly at tile seams.
    if memory.get("vae_tiling") and hasattr(vae, "enable_tiling"):
        vae.enable_tiling()
    if memory.get("vae_slicing") and hasattr(vae, "enable_slicing"):
        vae.enable_slicing()
    if placement is not None:
        return placing.place(pipe, placement if dev != "cpu" else "all", dev)
    if memory.get("cpu_offload") and dev != "cpu":
        pipe.enable_model_cpu_offload()  # moves each component to the GPU only while it runs
        return pipe
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

def ref_from_params(model: dict) -> ModelRef:
    """The ModelRef a worker loads, rebuilt from a task's params (see plan._where)."""
    defaults = {k: model[k] for k in ("dtype", "scheduler", "quantize") if model.get(k)}
    return ModelRef(model["name"], "", model["pipeline"], model["source"], model["identity"],
                    defaults=defaults, memory=model.get("memory") or {}, config=model.get("config"),
                    component=model.get("component"), trust_remote_code=model.get("trust_remote_code", False))


def use_loras(pipe, loras: list[dict]):
    """Make exactly these LoRA adapters active, at their scales, for the next call.

    Each file is loaded once per pipeline under the name of its content digest, so one
    loaded base model serves every LoRA combination of a render and a no-LoRA call."""
    loaded = getattr(pipe, "_farm_loras", set())
    if not loras:
        if loaded:
            pipe.disable_lora()
        return
    for lora in loras:
        name = "lora_" + lora["sha256"][:16]
        if name not in loaded:
            path = Path(lora["path"])
            try:  # what the task's key says it applies; file_digest refuses a FIFO
                changed = not path.is_dir() and file_digest(path) != lora["sha256"]
            except OSError as e:
                raise FarmError(f"Cannot read the LoRA {path} ({e.strerror or e}).", code=2) from None
            if changed:
                raise FarmError(f"The LoRA {path} changed after the job was planned; render the spec again to "
                                f"use it as it is now.", code=2)
            try:
                if path.is_dir():
                    pipe.load_lora_weights(str(path), adapter_name=name)
                else:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            except (OSError, ValueError, KeyError) as e:
                raise FarmError(f"Could not load the LoRA {path} into {type(pipe).__name__}: {e}", code=2) from None
            loaded.add(name)
    pipe._farm_loras = loaded
    pipe.enable_lora()
    pipe.set_adapters(["lora_" + lo["sha256"][:16] for lo in loras], [lo["scale"] for lo in loras])


# --- the preset library: `farm models` ------------------------------------------------------


def describe(name: str) -> dict:
    """One preset as `farm models show --json` prints it; `local` says whether it can load here."""
    preset = load_preset(_known_preset(name))
    source = preset["source"] + (f"@{preset['revision']}" if preset.get("revision") else "")
    local, where, error, rule = True, None, None, None
    try:
        ref = resolve(name)
        where = ref.source if not ref.source.startswith("builtin:") else "built in code"
        rule = timing.shape(ref)  # from its config: the version it is (CogVideoX 1.0 4k+1, 1.5 8k+1)
    except FarmError as e:
        local, error = False, e.message
    family = families.family(preset["pipeline"])
    rule = rule or (family.shape({}) if family else None)  # weights not here: the family's own
    info = {"name": name, "role": preset["role"], "pipeline": preset["pipeline"], "source": source,
            "local": local, "twin": preset.get("twin"), "description": preset.get("description", ""),
            "defaults": preset.get("defaults", {}), "memory": preset.get("memory", {}),
            "trust_remote_code": preset.get("trust_remote_code", False),
            "frames": [rule.step, rule.offset] if rule and preset["role"] == "motion" else None,
            "fps": preset.get("fps"), "max_frames": preset.get("max_frames"),
            "multiple_of": rule.multiple if rule else 8}
    for key in ("accelerate", "cache_threshold"):  # farm/acceleration/settings.py; only when the preset sets them
        if key in preset:
            info[key] = preset[key]
    if where:
        info["path"] = where
    if error:
        info["missing"] = error
    return info


def catalog() -> list[dict]:
    """Every preset as `describe` gives it; a preset file that cannot be read is listed with
    its error (`error`) rather than hiding the others."""
    rows = []
    for n in preset_names():
        try:
            rows.append(describe(n))
        except FarmError as e:
            rows.append({"name": n, "role": "?", "pipeline": "?", "source": "?", "local": False, "error": e.message})
    return rows


def _known_preset(name: str) -> str:
    if name not in preset_names():
        hint = difflib.get_close_matches(name, preset_names(), n=1)
        raise FarmError(f"unknown preset {name!r}" + (f" (did you mean {hint[0]!r}?)" if hint else "")
                        + f"; presets: {', '.join(preset_names())}.", code=2)
    return name


def pull(name: str, timeout: float = 10.0) -> Path:
    """Download a preset's (or hub id's) weights into the Hugging Face cache; return the snapshot.

    Checks that the hub answers first and gives every HTTP request `timeout` seconds, so an
    offline machine gets a FarmError in seconds rather than a hang."""
    if name in preset_names():
        preset = load_preset(name)
        source = preset["source"]
        if source.startswith("builtin:"):
            return local_path(resolve(name))  # built in code: "pulling" builds it
        if not is_hub_id(source):
            raise FarmError(f"Preset {name!r} points at {source}, a local path: nothing to download.", code=2)
        repo, revision = source.partition("@")[0], source.partition("@")[2] or preset.get("revision")
    elif is_hub_id(name):
        repo, _, revision = name.partition("@")
    else:
        _known_preset(name)
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", str(int(timeout)))
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", str(int(timeout)))
    from huggingface_hub import constants, snapshot_download

    endpoint = os.environ.get("HF_ENDPOINT") or constants.ENDPOINT
    _reachable(endpoint, timeout, name)
    try:
        path = snapshot_download(repo, revision=revision or None, etag_timeout=timeout, cache_dir=hub_cache(),
                                 endpoint=endpoint)
    except Exception as e:  # noqa: BLE001 - hub errors come from requests/httpx and huggingface_hub alike
        raise FarmError(f"Could not download {name!r} ({repo}{'@' + revision if revision else ''}) from {endpoint}: "
                        f"{type(e).__name__}: {e}", code=1) from None
    return Path(path)


def _reachable(endpoint: str, timeout: float, name: str):
    import socket
    from urllib.parse import urlparse

    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=min(timeout, 5.0)).close()
    except OSError as e:
        raise FarmError(f"Cannot download {name!r}: the model hub {endpoint} is unreachable ({e.strerror or e}). "
                        f"Run `farm models pull {name}` on a machine with a network (the Hugging Face cache "
                        f"can be copied), or set HF_ENDPOINT to a mirror.", code=1) from None
