"""Where a loaded pipeline runs, and in what precision: applying farm/models/fit.py's choice (all on
the GPU, VAE tiling, model or sequential CPU offload) and `quantize = "int8"` / `"fp8"`
(diffusers' TorchAO backend). Below both models/loading.py, which loads pipelines with it, and fit.py,
which estimates what each choice needs.
"""

from __future__ import annotations

from ..errors import FarmError

QUANTIZE = ("int8", "fp8")
FP8_CAPABILITY = (8, 9)  # Ada and Hopper: the first with FP8 tensor cores


def check_quantize(kind: str, device: str, capability: tuple[int, int] | None = None, label: str = "model") -> None:
    """Refuse a quantization this device cannot run, saying why (FP8 needs compute capability
    8.9+: Ada, Hopper, Blackwell; int8 weight-only runs anywhere, the CPU included)."""
    if kind not in QUANTIZE:
        raise FarmError(f"{label}: quantize must be one of {', '.join(QUANTIZE)}, got {kind!r}.", code=2)
    if kind != "fp8":
        return
    if not device.startswith("cuda"):
        raise FarmError(f"{label}: quantize = \"fp8\" needs an NVIDIA GPU of compute capability "
                        f"{FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]} or newer (Ada, Hopper), and this worker runs on "
                        f"the CPU. Use quantize = \"int8\" (weight-only), which the CPU runs.", code=2)
    if capability is not None and tuple(capability) < FP8_CAPABILITY:
        raise FarmError(f"{label}: quantize = \"fp8\" needs compute capability {FP8_CAPABILITY[0]}.{FP8_CAPABILITY[1]} "
                        f"or newer (Ada, Hopper), but {device} has {capability[0]}.{capability[1]}. "
                        f"Use quantize = \"int8\" (weight-only) on this GPU.", code=2)


def cuda_capabilities() -> list[tuple[int, int]]:
    """Compute capability of every visible GPU ([] without CUDA)."""
    import torch

    if not torch.cuda.is_available():
        return []
    return [tuple(torch.cuda.get_device_capability(i)) for i in range(torch.cuda.device_count())]


def capability(device: str) -> tuple[int, int] | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return tuple(torch.cuda.get_device_capability(torch.device(device)))


def quantization_config(kind: str, components: list[str]):
    """diffusers' PipelineQuantizationConfig mapping each denoiser to a TorchAoConfig:
    int8 weight-only, or FP8 weights with dynamic FP8 activations (per row)."""
    try:
        from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, Int8WeightOnlyConfig, PerRow
    except ImportError:
        raise FarmError("quantize needs torchao, which is not installed: pip install 'farm[quantize]'.",
                        code=2) from None
    from diffusers import PipelineQuantizationConfig, TorchAoConfig

    def config():
        return (Int8WeightOnlyConfig() if kind == "int8"
                else Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()))

    return PipelineQuantizationConfig(quant_mapping={part: TorchAoConfig(config()) for part in components})


# --- applying a choice to a loaded pipeline ------------------------------------------------


def place(pipe, placement: str, device: str):
    """Put a freshly loaded pipeline where the choice says: on the device, or under
    accelerate's offload hooks (which move each component, or layer, in only while it runs)."""
    if placement == "model_offload":
        pipe.enable_model_cpu_offload(device=device)
    elif placement == "sequential_offload":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe = pipe.to(device)
    return pipe


def set_tiling(pipe, on: bool):
    """Tile the VAE's decode for this call, or not (each task sets it, so its pixels do not
    depend on what ran before it)."""
    vae = getattr(pipe, "vae", None)
    if vae is None or not hasattr(vae, "enable_tiling"):
        return
    vae.enable_tiling() if on else vae.disable_tiling()
