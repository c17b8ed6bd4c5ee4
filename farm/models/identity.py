"""Resolution and identity: what a spec names, turned into a `ModelRef`.

A spec names a model as a preset (`presets/*.toml`), a local diffusers folder, a hub id
(`org/name`, optionally `@revision`, taken from the local Hugging Face cache), or one of
the ffmpeg-only motion modes `hold` / `crossfade`. A preset may also point at a single-file
checkpoint (`.safetensors` plus a `config` folder). Every `ModelRef` carries an `identity`
(source plus revision or content digest) that goes into task keys, so swapping a model
re-renders exactly the tasks that use it. `local_path` says where its weights are on this
machine (a twin is built there on first use).
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import files, home
from ..checks import path_problem, shown
from ..errors import FarmError
from ..queue.digest import file_digest, folder_digest
from ..quiet import silence_loaded
from . import families
from .hub import cached, cached_file, hub_cache, is_hub_id
from .presets import MEMORY_KEYS, NOT_CALL_OPTIONS, load_preset, preset_defaults, preset_names, presets_dir

FFMPEG_MOTION = ("hold", "crossfade")


# A LoRA file: rank 128 over every attention and MLP layer of Wan's 14B transformer in bf16 is
# ~1.2 GB; 4 GiB keeps a whole checkpoint named as a LoRA from being hashed at every render
# (farm/spec/spec.py applies the same bound to a spec's own LoRAs).
MAX_LORA_BYTES = 4 << 30


@dataclass(frozen=True)
class PresetLora:
    """A LoRA a preset applies, found in the local Hugging Face cache: where it is, its content
    digest (what task keys hash, as for a spec's LoRAs), its scale, and the denoiser it loads
    into (None: the one `load_lora_weights` picks); `repo`, `file`, `revision` say where it came from."""

    path: Path
    sha256: str
    scale: float
    into: str | None
    repo: str
    file: str
    revision: str | None = None


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
    loras: tuple[PresetLora, ...] = ()  # the preset's own LoRAs (a spec's add to them)

    @property
    def is_ffmpeg(self) -> bool:
        return self.pipeline == "ffmpeg"

    def options(self) -> dict:
        """Extra keyword arguments for every call of the pipeline (part of the task key)."""
        return {k: v for k, v in self.defaults.items() if k not in NOT_CALL_OPTIONS}


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
                        loras=preset_loras(name, preset), **extra)
    if problem := path_problem(source, presets_dir()):
        raise FarmError(f"Preset {name!r}: source: {problem}", code=2)
    if source.endswith(".safetensors"):
        ref = _resolve_single_file(name, preset, extra)
        return replace(ref, loras=preset_loras(name, preset))  # the base's errors first
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
    return ModelRef(name, preset["role"], preset["pipeline"], inner.source, inner.identity, inner.revision,
                    loras=preset_loras(name, preset), **extra)  # the base's errors first


def preset_loras(name: str, preset: dict, missing: list | None = None) -> tuple[PresetLora, ...]:
    """The LoRAs preset `name` applies, each found in the local Hugging Face cache (farm never
    downloads while rendering: `farm models pull <preset>` fetches them). A LoRA that is not
    there is a FarmError (exit 2) naming that command, unless `missing` is given: it is then
    appended there ({repo, file, revision}) and left out."""
    out = []
    for lo in preset.get("loras", ()):
        revision = lo.get("revision")
        path = cached_file(lo["repo"], lo["file"], revision)
        where = f"{lo['repo']}/{lo['file']}" + (f"@{revision}" if revision else "")
        if path is None:
            if missing is not None:
                missing.append({"repo": lo["repo"], "file": lo["file"], "revision": revision})
                continue
            raise FarmError(f"model {name!r}: its LoRA {where} is not on this machine: farm looked in the Hugging "
                            f"Face cache at {hub_cache()} and never downloads while rendering. Fetch it with "
                            f"`farm models pull {name}` where a network is available.", code=2)
        try:
            size = files.regular_stat(path.resolve()).st_size
            if size > MAX_LORA_BYTES:
                raise FarmError(f"model {name!r}: its LoRA {where} is {size} bytes; a LoRA may be at most "
                                f"{MAX_LORA_BYTES} (is it a whole checkpoint?)", code=2)
            digest = file_digest(path)
        except OSError as e:
            raise FarmError(f"model {name!r}: cannot read its LoRA {path} ({e.strerror or e}).", code=2) from None
        out.append(PresetLora(path, digest, float(lo.get("scale", 1.0)), lo.get("into"), lo["repo"], lo["file"],
                              revision))
    return tuple(out)


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
    found = cached(name)
    repo, _, revision = name.partition("@")
    if found is None and preset is not None:
        label, data = preset
        twin = f" To smoke-test the family without weights, use its tiny twin {data['twin']!r}." \
            if data.get("twin") else ""
        raise FarmError(f"model {label!r} ({name}) has no weights on this machine: farm looked in the Hugging Face "
                        f"cache at {hub_cache()} and never downloads while rendering. Fetch them with "
                        f"`farm models pull {label}` where a network is available.{twin}", code=2)
    if found is None:
        raise FarmError(
            f"model {name!r} is not in the local Hugging Face cache ({hub_cache()}), and farm never downloads "
            f"while rendering. Fetch it first with `hf download {repo}"
            + (f" --revision {revision}" if revision else "") + "`, or point the spec at a local folder.",
            code=2,
        )
    snapshot = found.parent
    commit = snapshot.name
    pipeline = pipeline or _pipeline_class(found)
    return ModelRef(name, _role_of(name, pipeline), pipeline, str(snapshot), f"hub:{repo}@{commit}", commit)


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


def ref_from_params(model: dict) -> ModelRef:
    """The ModelRef a worker loads, rebuilt from a task's params (see plan._where)."""
    defaults = {k: model[k] for k in ("dtype", "scheduler", "quantize") if model.get(k)}
    return ModelRef(model["name"], "", model["pipeline"], model["source"], model["identity"],
                    defaults=defaults, memory=model.get("memory") or {}, config=model.get("config"),
                    component=model.get("component"), trust_remote_code=model.get("trust_remote_code", False))
