"""SDXL: text-to-image, two CLIP encoders, a UNet with size conditioning over an 8x VAE."""

from .family import Family, Memory, Shape, Twin

PIPELINE = "StableDiffusionXLPipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=8)


FAMILY = Family(
    name="SDXL", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=8, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 1, 1), decode_frames=1, tile=1024, token_bytes=200e3,
                  decode_bytes=3500, ref_params=2.57, ref_vae=0.084),
    denoisers=("unet",),
    twin=Twin("sdxl", "build_sdxl"),
)
