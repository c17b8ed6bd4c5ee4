"""Wan 2.2 I2V A14B: Wan 2.1's pipeline class, VAE, patches, rotary table and time (the A14B
models keep sample_fps 16, frame_num 81; only TI2V-5B is 24 fps, 121 frames), with two 14B
experts: `transformer` for high noise, `transformer_2` past `boundary_ratio`, one running at a
time. No CLIP image encoder; `last_image` works, though it was trained on first frames only."""

from dataclasses import replace

from ..twins import build_tokenizer, t5
from .family import Twin
from .wan21 import FAMILY as WAN21


def build_twin(shapes: dict):
    """Wan 2.2 A14B image-to-video: two experts (high-noise `transformer`, low-noise
    `transformer_2`, switched at `boundary_ratio`), no CLIP image encoder."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )

    tokenizer = build_tokenizer(max_length=64)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    experts = []
    for _ in range(2):
        torch.manual_seed(len(experts))
        experts.append(WanTransformer3DModel(
            **shapes, num_attention_heads=2, attention_head_dim=16, in_channels=36, out_channels=16,
            text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
        ))
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=t5(tokenizer, 32, umt5=True), vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), image_processor=None, image_encoder=None,
        transformer=experts[0], transformer_2=experts[1], boundary_ratio=0.9,  # Wan2.2-I2V-A14B's value
    )


FAMILY = replace(
    WAN21, name="Wan 2.2", requires=("transformer_2",), denoisers=("transformer", "transformer_2"),
    memory=replace(WAN21.memory, experts=2),
    twin=Twin("wan22", build_twin, {"patch_size": [1, 2, 2], "rope_max_seq_len": 64}),
)
