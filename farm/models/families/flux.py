"""FLUX.1: text-to-image, a double/single-stream transformer over 2x2-packed latents of an 8x
VAE (sides in multiples of 16; rotary positions bound no size)."""

from .family import Family, Memory, Shape, Twin

PIPELINE = "FluxPipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=16)  # 8x VAE, latents packed 2x2


FAMILY = Family(
    name="Flux", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=16, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 2, 2), decode_frames=1, tile=1024, token_bytes=150e3,
                  decode_bytes=3500, ref_params=11.9, ref_vae=0.084),
    denoisers=("transformer",),
    twin=Twin("flux", "build_flux"),
)
