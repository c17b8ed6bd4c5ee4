"""Loading: a `ModelRef` made a diffusers pipeline on a device (`load_pipeline`, never from the
network), its LoRA adapters switched for each call (`use_loras`), and the memory helpers a
worker decides its loads and unloads by (`device`, `footprint`, `free_memory`, `release_memory`).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .. import allocator, files
from ..errors import FarmError
from ..queue.digest import file_digest, folder_digest
from ..quiet import silence_loaded
from . import families
from .identity import ModelRef, local_path


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
    code only when its preset says `trust_remote_code = true`. `placement` is farm/models/fit.py's
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
        parts = [p for p in families.of_index(ref.pipeline, index).denoisers if p in held]
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
    allocator.give_back()  # the host memory it held (and, on the CPU, what keep_freed kept)


def adapter_name(lora: dict) -> str:
    """The adapter a LoRA file is loaded as: its content digest, and the denoiser it went into
    when it names one (the same file may go into both of Wan 2.2's experts)."""
    return "lora_" + lora["sha256"][:16] + (f"_{lora['into']}" if lora.get("into") else "")


def _first_denoiser(pipe) -> str:
    """The denoiser `load_lora_weights` loads into by default (`unet` or `transformer`)."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def use_loras(pipe, loras: list[dict]):
    """Make exactly these LoRA adapters active, at their scales, for the next call.

    Each file is loaded once per pipeline under the name of its content digest (and target),
    so one loaded base model serves every LoRA combination of a render and a no-LoRA call: a
    fast preset's distill LoRAs and its plain base share one warm pipeline, and a call without
    LoRAs disables every adapter. A LoRA with `into = "transformer_2"` loads into Wan 2.2's
    low-noise expert (diffusers' `load_lora_weights(..., load_into_transformer_2=True)`,
    loaders/lora_pipeline.py:4231-4259); any other target is the denoiser `load_lora_weights`
    loads into by default."""
    loaded = getattr(pipe, "_farm_loras", set())
    if not loras:
        if loaded:
            pipe.disable_lora()
        return
    for lora in loras:
        name = adapter_name(lora)
        if name not in loaded:
            path = Path(lora["path"])
            try:  # what the task's key says it applies; file_digest refuses a FIFO
                changed = not path.is_dir() and file_digest(path) != lora["sha256"]
            except OSError as e:
                raise FarmError(f"Cannot read the LoRA {path} ({e.strerror or e}).", code=2) from None
            if changed:
                raise FarmError(f"The LoRA {path} changed after the job was planned; render the spec again to "
                                f"use it as it is now.", code=2)
            into = lora.get("into")
            target = {"load_into_transformer_2": True} if into == "transformer_2" else {}
            if into and getattr(pipe, into, None) is None:
                raise FarmError(f"Cannot load the LoRA {path} into {into}: this {type(pipe).__name__} has no "
                                f"{into}.", code=2)
            if into not in (None, "transformer_2") and into != _first_denoiser(pipe):
                raise FarmError(f"Cannot load the LoRA {path} into {into}: diffusers loads a LoRA into a "
                                f"pipeline's first denoiser, or into Wan 2.2's transformer_2.", code=2)
            try:
                if path.is_dir():
                    pipe.load_lora_weights(str(path), adapter_name=name, **target)
                else:
                    pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name, **target)
            except (OSError, ValueError, KeyError, AttributeError) as e:
                raise FarmError(f"Could not load the LoRA {path} into {type(pipe).__name__}"
                                f"{'.' + into if into else ''}: {e}", code=2) from None
            loaded.add(name)
    pipe._farm_loras = loaded
    pipe.enable_lora()
    pipe.set_adapters([adapter_name(lo) for lo in loras], [lo["scale"] for lo in loras])
