"""FLUX.1: text-to-image, a double/single-stream transformer over 2x2-packed latents of an 8x
VAE (sides in multiples of 16; rotary positions bound no size)."""

from ..twins import build_tokenizer, clip_text, t5, vae_8x
from .family import Family, Memory, Shape, Twin

PIPELINE = "FluxPipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=16)  # 8x VAE, latents packed 2x2


def build_twin(shapes: dict):
    """FLUX.1: double- and single-stream transformer over 2x2-packed latents (16 channels in,
    from a 4-channel 8x VAE), CLIP pooled plus T5 text, guidance embedding (as FLUX.1-dev)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = build_tokenizer(max_length=32)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=vae_8x(4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=clip_text(tokenizer, 32), tokenizer=tokenizer,
        text_encoder_2=t5(tokenizer, 32), tokenizer_2=build_tokenizer(max_length=64),
    )


FAMILY = Family(
    name="Flux", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=16, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 2, 2), decode_frames=1, tile=1024, token_bytes=150e3,
                  decode_bytes=3500, ref_params=11.9, ref_vae=0.084),
    denoisers=("transformer",),
    twin=Twin("flux", build_twin),
)
