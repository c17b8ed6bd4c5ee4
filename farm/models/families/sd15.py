"""Stable Diffusion 1.x: text-to-image, a UNet over an 8x VAE (sides in multiples of 8)."""

from .family import Family, Memory, Shape, Twin

PIPELINE = "StableDiffusionPipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=8)  # the UNet's 8x VAE; no position embedding bounds it


FAMILY = Family(
    name="SD 1.x", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=8, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 1, 1), decode_frames=1, tile=512, token_bytes=150e3,
                  decode_bytes=3500, ref_params=0.86, ref_vae=0.084),
    denoisers=("unet",),
    twin=Twin("text-to-image", "build_text_to_image"),
)
