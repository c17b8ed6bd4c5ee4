"""Stable Diffusion 3.x: text-to-image, an MMDiT over 2x2 patches of a 16-channel 8x VAE; its
learned position embedding covers pos_embed_max_size patches a side (192: 3072 px)."""

from .family import Family, Memory, Shape, Twin

PIPELINE = "StableDiffusion3Pipeline"


def shape(config: dict) -> Shape:
    p, pos = config.get("patch_size", 2), config.get("pos_embed_max_size", 192)
    return Shape(PIPELINE, multiple=8 * p, max_width=8 * p * pos, max_height=8 * p * pos,
                 why_max=f"its position embedding holds {pos}x{pos} patches")


FAMILY = Family(
    name="SD3", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=16, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 2, 2), decode_frames=1, tile=1024, token_bytes=200e3,
                  decode_bytes=3500, ref_params=2.47, ref_vae=0.084),
    denoisers=("transformer",),
    twin=Twin("sd3", "build_sd3", {"patch_size": 2, "pos_embed_max_size": 32}),
)
