"""Fit the machine: estimate a task's peak memory, and choose how to run it so that it fits.

A task's peak is the weights that are on the device at that moment plus the largest
activation of its phases: the denoiser call (linear in latent tokens: frames, height and
width after the VAE's compression and the transformer's patches) or the VAE decode (linear
in the pixels decoded at once; video VAEs decode a few frames at a time, tiling bounds it by
the tile; a call that packs its video in sections, FramePack, shows its denoiser one section at a
time, `Memory.section_frames`). What a model needs comes from its preset's `[fit]` table (parameter counts and
activation rules, each checked against a published figure named in the preset), or, for a
model folder (the twins included), from its safetensors headers and its family's rule.

Before a task runs, the worker compares the estimate of each way to run it, cheapest first,
with what its device has free (the GPU's free memory, or RAM on a CPU worker), and takes the
first that fits:

    all                 every component on the device
    vae_tiling          ... and the VAE decodes tile by tile
    model_offload       one component on the GPU at a time (enable_model_cpu_offload), tiled VAE
    sequential_offload  one layer at a time (enable_sequential_cpu_offload), tiled VAE

On the CPU only the first two exist. If none fits, the task is refused with the figures
instead of running out of memory mid-job.

Quantization (`quantize = "int8"` / `"fp8"`) stores the denoiser's weights in one byte
through diffusers' TorchAO backend (`TorchAoConfig`); FP8 needs an NVIDIA GPU of compute
capability 8.9 or newer.

This module imports no torch: `farm models show` and the planner use it without loading a model.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

from .. import files
from ..checks import FIT_KEYS, PLACEMENTS  # noqa: F401  (the placements' ladder and [fit]'s keys: farm/checks.py)
from ..errors import FarmError
from ..units import human
from . import families, timing
from .placement import (  # noqa: F401
    FP8_CAPABILITY,
    QUANTIZE,
    capability,
    check_quantize,
    cuda_capabilities,
    place,
    quantization_config,
    set_tiling,
)

ON_CPU = ("all", "vae_tiling")
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
# The share of a UNet's parameters in Linear layers, which torchao quantizes (its convolutions
# keep the load dtype): 0.58 measured on tiny-sdxl's UNet (1.45 MB in fp32, 0.82 MB int8);
# a transformer is all Linear but for norms and embeddings, so 1 byte a parameter.
UNET_LINEAR = 0.6

# Room kept free on top of an estimate: the allocator's fragmentation and the estimate's own
# error (the published figures the rules were checked against were met within about 25%).
HEADROOM = 1.15
CUDA_RESERVE = 1 << 30  # cuBLAS/cuDNN workspaces and the CUDA context's growth

# Each family's memory rule (spatial and temporal compression, patch, VAE decode and tile,
# activation figures) is its own: farm/models/families/, `Family.memory`.


def rank(placement: str) -> int:
    return PLACEMENTS.index(placement)


def offload_level(placement: str) -> int:
    """0 on the device (tiled or not: tiling is switched per call), 1 model offload, 2 sequential:
    a warm pipeline is loaded again only when a task needs a higher level."""
    return max(rank(placement) - 1, 0)


# --- what a model needs -------------------------------------------------------------------


@dataclass(frozen=True)
class Needs:
    """A model's weights (parameters per component) and activation rule."""

    pipeline: str
    params: dict[str, float]  # component -> parameter count
    token_bytes: float  # per latent token of one denoiser call, CFG batch included, 2-byte dtype
    decode_bytes: float  # per pixel decoded at once, 2-byte dtype
    patch: tuple[int, int, int]
    tile: int  # tile side in pixels
    source: str  # where the figures come from
    # the pipeline's own settings that tell families of one class apart (model_index.json's, or
    # for a preset whose weights are not here its family's: Wan 2.2 TI2V-5B's expand_timesteps)
    config: dict = field(default_factory=dict, hash=False)

    @property
    def family(self) -> families.Family:
        return families.family(self.pipeline, self.params, self.config)


class Unmeasured(FarmError):
    """A model whose memory farm cannot estimate: no weights on this machine to measure and no
    [fit] params in its preset, or a pipeline without a family memory rule. A worker then loads
    it without fitting; every other FarmError of the estimate is an error."""


def preset_fit(name: str | None) -> dict:
    """A preset's [fit] table ({} for a model that is not a preset, or has none); the preset's
    loading has checked it (farm/checks.py `fit_table`)."""
    from .. import models

    if not name or name not in models.preset_names():
        return {}
    return models.load_preset(name).get("fit", {})


def needs(pipeline: str, name: str | None = None, folder: Path | None = None) -> Needs:
    """What the model needs: measured from its folder's safetensors headers when it is on this
    machine (exact parameter counts), else from its preset's [fit] table."""
    if families.family(pipeline) is None:
        raise Unmeasured(f"farm has no memory rule for {pipeline}.", code=2)
    fit = preset_fit(name)
    params, source, config = {}, "family rule", {}
    if folder is not None and (Path(folder) / "model_index.json").is_file():
        params, source = folder_params(Path(folder)), f"safetensors headers in {folder}"
        config = _pipeline_config(Path(folder))
    if not params and fit.get("params"):
        params, source = {k: float(v) * 1e9 for k, v in fit["params"].items()}, f"preset {name!r} [fit]"
        config = dict(_preset_family(name).requires_config)  # no model_index.json: its twin's family says
    if not params:
        raise Unmeasured(f"model {name or pipeline!r}: no weights on this machine and no [fit] params in its preset, "
                        f"so its memory cannot be estimated.", code=2)
    family = families.family(pipeline, params, config)
    rule = family.memory
    if "token_bytes" in fit:
        token_bytes, decode_bytes = float(fit["token_bytes"]), float(fit.get("decode_bytes", rule.decode_bytes))
    else:  # scale the family's rule to this denoiser's size (one expert's, where experts take turns)
        size = sum(v for k, v in params.items() if k in family.denoisers) / 1e9 / rule.experts
        scale = math.sqrt(max(size, 1e-9) / rule.ref_params)
        vae_scale = min(1.0, math.sqrt(params.get("vae", rule.ref_vae * 1e9) / 1e9 / rule.ref_vae))
        token_bytes, decode_bytes = rule.token_bytes * scale, rule.decode_bytes * vae_scale
    return Needs(pipeline, params, token_bytes, decode_bytes, tuple(fit.get("patch", rule.patch)),
                 _tile(rule, folder), source, config)


def _pipeline_config(folder: Path) -> dict:
    """The pipeline's own settings in a model folder's model_index.json (beside its components)."""
    try:
        index = files.read_json(folder / "model_index.json")
    except (OSError, ValueError, FarmError):
        return {}
    return families.index_config(index) if isinstance(index, dict) else {}


def _preset_family(name: str) -> families.Family:
    from .presets import load_preset, preset_family

    return preset_family(load_preset(name))


def folder_params(folder: Path) -> dict[str, float]:
    """Parameters per component of a diffusers folder, read from the safetensors headers (a
    few KB each: no weights are loaded)."""
    index = files.read_json(folder / "model_index.json")
    out = {}
    for part, value in index.items():
        if not (isinstance(value, list) and value[0]) or not (folder / part).is_dir():
            continue
        weights = sorted((folder / part).glob("*.safetensors"))
        plain = [f for f in weights if not VARIANT.search(f.name)]
        weights = plain or weights  # a hub repo may hold the weights twice: full and an fp16 variant
        if weights:
            out[part] = float(sum(_safetensors_params(f) for f in weights))
    return out


VARIANT = re.compile(r"\.(fp16|bf16|fp32|fp8)[.-]")


# safetensors refuses headers over 100,000,000 bytes (MAX_HEADER_SIZE in its Rust core); a
# length past it is a damaged or hostile file, not one to allocate for.
MAX_SAFETENSORS_HEADER = 100_000_000


def _safetensors_params(path: Path) -> int:
    with files.open_regular(path) as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > MAX_SAFETENSORS_HEADER:
            raise FarmError(f"{path}: its safetensors header claims {length:,} bytes; safetensors allows at most "
                            f"{MAX_SAFETENSORS_HEADER:,}.", code=2)
        header = json.loads(f.read(length))
    return sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")


def _tile(rule: families.Memory, folder: Path | None) -> int:
    """The VAE's tile side in pixels: its config's sample size where tiling uses it (SD-family
    AutoencoderKL tiles at `sample_size`; CogVideoX at half its sample size), else the family's."""
    config = Path(folder) / "vae" / "config.json" if folder else None
    if config is not None and config.is_file():
        cfg = files.read_json(config)
        if cfg.get("_class_name") == "AutoencoderKL" and cfg.get("sample_size"):
            size = cfg["sample_size"]
            return int(size[0] if isinstance(size, list) else size)
        if cfg.get("_class_name") == "AutoencoderKLCogVideoX" and cfg.get("sample_height"):
            return int(math.sqrt(cfg["sample_height"] // 2 * cfg["sample_width"] // 2))
    return rule.tile


# --- the estimate -------------------------------------------------------------------------


@dataclass(frozen=True)
class Estimate:
    """Peak device memory of one task for each way to run it, in bytes."""

    model: str
    width: int
    height: int
    frames: int
    dtype: str
    quantize: str | None
    weights: dict[str, int]  # component -> bytes on the device when loaded
    denoise: int  # activation of one denoiser call
    decode: int  # activation of the VAE decode, untiled
    decode_tiled: int
    peaks: dict[str, int] = field(default_factory=dict)
    resident: dict[str, int] = field(default_factory=dict)  # held on the device between tasks
    source: str = ""

    def to_json(self) -> dict:
        return {"width": self.width, "height": self.height, "frames": self.frames, "dtype": self.dtype,
                "quantize": self.quantize, "weights": self.weights, "weights_total": sum(self.weights.values()),
                "denoise": self.denoise, "decode": self.decode, "decode_tiled": self.decode_tiled,
                "peaks": self.peaks, "source": self.source}

    def text(self) -> str:
        parts = ", ".join(f"{k} {human(v)}" for k, v in self.weights.items())
        head = (f"{self.width}x{self.height}" + (f", {self.frames} frames" if self.frames > 1 else "")
                + f", {self.dtype}" + (f", {self.quantize} denoiser" if self.quantize else ""))
        lines = [f"{head}: weights {human(sum(self.weights.values()))} ({parts})",
                 f"activations: denoiser call {human(self.denoise)}, VAE decode {human(self.decode)} "
                 f"({human(self.decode_tiled)} tiled)"]
        lines += [f"{p:<19} {human(v):>9} peak" for p, v in self.peaks.items()]
        return "\n".join(lines)


def estimate(need: Needs, width: int, height: int, frames: int = 1, *, dtype: str = "bfloat16",
             quantize: str | None = None, batch: int = 1, vae_dtype: str | None = None,
             exclude: tuple[str, ...] = (), untiled: bool = False, label: str = "") -> Estimate:
    """Peak memory of one call at this size and frame count, for every placement (`untiled`:
    the offloading ones without VAE tiling, as some published figures were measured)."""
    family = need.family
    rule, denoisers = family.memory, family.denoisers
    nbytes = DTYPE_BYTES.get(dtype, 2)
    vbytes = DTYPE_BYTES.get(vae_dtype or dtype, 2)
    weights = {}
    for part, count in need.params.items():
        if part in exclude:
            continue
        each = vbytes if part == "vae" else nbytes
        if quantize and part in denoisers:  # torchao quantizes Linear layers: a UNet's convolutions stay
            each = 1 if part != "unet" else UNET_LINEAR + (1 - UNET_LINEAR) * nbytes
        weights[part] = round(count * each)
    video = rule.temporal > 1
    pt, ph, pw = need.patch
    seen = min(frames, rule.section_frames) if rule.section_frames else frames  # FramePack: one section
    latent_frames = (math.ceil((seen - 1) / rule.temporal) + 1) if video else 1
    tokens = (math.ceil(latent_frames / pt) * math.ceil(height / rule.spatial / ph)
              * math.ceil(width / rule.spatial / pw))
    denoise = int(tokens * need.token_bytes * batch * nbytes / 2)
    at_once = rule.decode_frames or frames if video else 1
    decode = int(width * height * min(at_once, frames) * need.decode_bytes * batch * vbytes / 2)
    tiled_frames = (at_once if rule.tiled_frames is None else rule.tiled_frames) if video else 1
    tiled = int(min(width * height, need.tile ** 2) * min(tiled_frames, frames) * need.decode_bytes * vbytes / 2)
    tiled = decode if untiled else min(tiled, decode)

    total = sum(weights.values())
    text = [w for k, w in weights.items() if k not in denoisers and k != "vae"]
    dens = [w for k, w in weights.items() if k in denoisers]
    vae = weights.get("vae", 0)
    largest_layer = max(weights.values(), default=0) // 40  # a transformer block or UNet stage
    peaks = {
        "all": total + max(denoise, decode),
        "vae_tiling": total + max(denoise, tiled),
        "model_offload": max(max(text, default=0), max(dens, default=0) + denoise, vae + tiled),
        "sequential_offload": largest_layer + max(denoise, tiled),
    }
    resident = {"all": total, "vae_tiling": total, "model_offload": 0, "sequential_offload": 0}
    return Estimate(label, width, height, frames, dtype, quantize, weights, denoise, decode, tiled, peaks, resident,
                    need.source)


# --- choosing ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    placement: str
    tiling: bool
    peak: int  # bytes the task is expected to need on the device
    resident: int  # bytes the loaded model holds on the device between tasks
    free: int  # what the device had (plus what unloading warm models would give back)

    def to_json(self) -> dict:
        return {"placement": self.placement, "tiling": self.tiling, "peak": self.peak, "free": self.free}


def fits(peak: int, free: int, device: str) -> bool:
    return peak * HEADROOM + (CUDA_RESERVE if device.startswith("cuda") else 0) <= free


def choose(est: Estimate, free: int, device: str, *, floor: dict | None = None, host_free: int | None = None) -> Choice:
    """The cheapest way to run the task that fits in `free` bytes of the device, or a FarmError.

    `floor` is a preset's [memory] table: `cpu_offload = true` starts the ladder at model
    offload (on accelerators), `vae_tiling = true` always tiles. Offloading needs the weights in
    host RAM: with `host_free`, a placement that offloads is taken only if they fit there."""
    floor = floor or {}
    ladder = list(ON_CPU if device == "cpu" else PLACEMENTS)
    if est.quantize:  # accelerate's layer-by-layer hooks do not move torchao's tensor subclasses
        ladder = [p for p in ladder if p != "sequential_offload"]
    if floor.get("cpu_offload") and device != "cpu":
        ladder = [p for p in ladder if rank(p) >= rank("model_offload")]
    if floor.get("vae_tiling"):
        ladder = [p for p in ladder if p != "all"]
    for placement in ladder:
        if placement in ("model_offload", "sequential_offload") and host_free is not None \
                and sum(est.weights.values()) > host_free:
            continue
        if fits(est.peaks[placement], free, device):
            return Choice(placement, placement != "all", est.peaks[placement], est.resident[placement], free)
    best = est.peaks[ladder[-1]] if ladder else min(est.peaks.values())
    shape = f"{est.width}x{est.height}" + (f", {est.frames} frames" if est.frames > 1 else "")
    where = "RAM" if device == "cpu" else f"memory on {device}"
    raise FarmError(f"model {est.model!r} at {shape} needs about {human(best * HEADROOM)} even with "
                    f"{ladder[-1].replace('_', ' ') if ladder else 'no option'} (weights "
                    f"{human(sum(est.weights.values()))}), but this worker has {human(free)} of free {where}. "
                    f"Render smaller or shorter segments, set quantize = \"int8\", or use a machine with more "
                    f"memory.", code=2)


# --- tasks --------------------------------------------------------------------------------


def frame_rule(rule: families.Shape, wanted: int) -> int:
    """The smallest frame count >= wanted that a model with this rule generates (Wan 4k+1,
    LTX 8k+1; farm/models/timing.py's `shape` reads a model's rule from its config)."""
    step, offset = rule.step, rule.offset
    return max(offset + step * math.ceil(max(wanted - offset, 0) / step), wanted, 1 + step)


def for_model(model, shape: tuple[int, int, int], device: str, folder: Path | None = None) -> Estimate:
    """The estimate of a task's model (its `tasks.Model` record, farm/plan/tasks.py) at a shape
    (the task's `shape`), on a device."""
    dtype = "float32" if device == "cpu" else (model.dtype or "bfloat16")
    need = needs(model.pipeline, model.name or None, folder)
    return estimate(need, *shape, dtype=dtype, quantize=model.quantize, label=model.name)


def task_memory(task, device: str = "cuda") -> int | None:
    """The peak bytes of a task (a farm/plan/tasks.py record) with everything on the device
    (what `farm plan` reports), or None for a task that loads no model."""
    from .. import models

    if task.model is None:
        return None
    try:
        ref = models.ref_from_params(task.model.to_json())
        folder = Path(ref.config) if ref.config else models.local_path(ref)  # a twin is built, as a render would
        return for_model(task.model, task.shape, device, folder).peaks["all"]
    except (Unmeasured, OSError):  # no weights here and no [fit] table: unknown
        return None


def describe(name: str, width: int | None = None, height: int | None = None, frames: int | None = None,
             device: str = "cuda") -> Estimate | None:
    """A preset's estimate for `farm models show`: at its default size (else 1024x1024), and for
    a motion model its trained window (`max_frames`, else 81) unless given. None when the
    preset runs no model or its needs are unknown."""
    from .. import models

    preset = models.load_preset(name)
    defaults = preset.get("defaults", {})
    if width is None or height is None:
        width, height = defaults.get("size", [1024, 1024] if preset["role"] == "keyframes" else [512, 512])
    if frames is None:
        frames = int(preset.get("max_frames", 81)) if preset["role"] == "motion" else 1
    folder, ref = None, None
    try:
        ref = models.resolve(name)
        folder = Path(ref.config) if ref.config else models.local_path(ref)
    except FarmError:  # weights not here: the preset's figures
        pass
    if preset["role"] == "motion" and frames > 1:  # the rule of the version it is (CogVideoX 1.0 or 1.5)
        frames = frame_rule(timing.shape(ref) if ref else _preset_family(name).shape({}), frames)
    dtype = "float32" if device == "cpu" else (defaults.get("dtype") or "bfloat16")  # as for_model does
    try:
        return estimate(needs(preset["pipeline"], name, folder), width, height, frames, dtype=dtype,
                        quantize=preset.get("quantize"), label=name)
    except FarmError:
        return None


# --- quantization -------------------------------------------------------------------------


# --- the published figures each preset is checked against -----------------------------------


def checks(name: str) -> list[tuple[dict, int]]:
    """Each [fit] check of a preset with what the estimate gives for it, in bytes: the weights
    (`what = "weights"`), or the peak of a placement at a size and frame count, under the
    check's conditions (batch, VAE dtype, components left out, patch, quantization)."""
    from .. import models

    preset = models.load_preset(name)
    fit = preset_fit(name)
    need = needs(preset["pipeline"], name)
    out = []
    for check in fit.get("checks", []):
        if "patch" in check:
            need_c = replace(need, patch=tuple(check["patch"]))
        else:
            need_c = need
        width, height = check.get("size", preset.get("defaults", {}).get("size", [1024, 1024]))
        est = estimate(need_c, width, height, check.get("frames", 1), dtype=preset["defaults"].get("dtype", "bfloat16"),
                       quantize=check.get("quantize"), batch=check.get("batch", 1), vae_dtype=check.get("vae_dtype"),
                       exclude=tuple(check.get("exclude", ())), untiled=check.get("tiling") is False, label=name)
        got = sum(est.weights.values()) if check.get("what") == "weights" else est.peaks[check["placement"]]
        out.append((check, got))
    return out
