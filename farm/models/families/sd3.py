"""Stable Diffusion 3.x: text-to-image, an MMDiT over 2x2 patches of a 16-channel 8x VAE; its
learned position embedding covers pos_embed_max_size patches a side (192: 3072 px)."""

from ..twins import build_tokenizer, clip_text, t5, vae_8x
from .family import Family, Memory, Shape, Twin

PIPELINE = "StableDiffusion3Pipeline"


def shape(config: dict) -> Shape:
    p, pos = config.get("patch_size", 2), config.get("pos_embed_max_size", 192)
    return Shape(PIPELINE, multiple=8 * p, max_width=8 * p * pos, max_height=8 * p * pos,
                 why_max=f"its position embedding holds {pos}x{pos} patches")


def build_twin(shapes: dict):
    """SD 3.x: MMDiT transformer (patch 2), two CLIPs with projection plus T5, 16-channel 8x VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = build_tokenizer(max_length=32)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        **shapes, sample_size=8, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae_8x(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=clip_text(tokenizer, 16, projection=True), tokenizer=tokenizer,
        text_encoder_2=clip_text(tokenizer, 16, projection=True), tokenizer_2=build_tokenizer(max_length=32),
        text_encoder_3=t5(tokenizer, 64), tokenizer_3=build_tokenizer(max_length=64),
    )


FAMILY = Family(
    name="SD3", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=16, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 2, 2), decode_frames=1, tile=1024, token_bytes=200e3,
                  decode_bytes=3500, ref_params=2.47, ref_vae=0.084),
    denoisers=("transformer",),
    twin=Twin("sd3", build_twin, {"patch_size": 2, "pos_embed_max_size": 32}),
)
