"""LTX-Video (LTXConditionPipeline): keyframes as conditions at frame indices. Its VAE compresses
32x in space and 8x in time (8k+1 frames, so the last keyframe sits on a latent frame boundary,
index 8k, as the condition pipeline requires); patch 1: sides in multiples of 32. Time:
diffusers' frame_rate default 25; the model card: below 257 frames."""

from ..twins import build_tokenizer, t5
from .family import Family, Memory, Shape, Time, Twin

PIPELINE = "LTXConditionPipeline"


def shape(config: dict) -> Shape:
    p, pt = config.get("patch_size", 1), config.get("patch_size_t", 1)
    return Shape(PIPELINE, step=8 * pt, offset=1, multiple=32 * p, min_side=32 * p, ends=True)


def conditions(params, first, last, generated):
    """The keyframes as LTXVideoConditions at frame 0 and at the clip's last frame, and the
    model's rate (at which farm generates) as `frame_rate`: LTX conditions its motion on it."""
    from diffusers.pipelines.ltx.pipeline_ltx_condition import LTXVideoCondition

    items = [LTXVideoCondition(image=first, frame_index=0)]
    if last is not None:
        items.append(LTXVideoCondition(image=last, frame_index=generated - 1))
    return {"conditions": items, "frame_rate": max(1, round(params["model_fps"]))}


def build_twin(shapes: dict):
    """LTX-Video: a patch-4 causal video VAE with three spatio-temporal downsamples (32x
    spatial, 8x temporal: 8k+1 frames, as the real one), T5 text, LTX transformer."""
    import torch
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXConditionPipeline,
        LTXVideoTransformer3DModel,
    )

    tokenizer = build_tokenizer(max_length=64)
    torch.manual_seed(0)
    transformer = LTXVideoTransformer3DModel(
        **shapes, in_channels=8, out_channels=8, num_attention_heads=4, attention_head_dim=8,
        cross_attention_dim=32, num_layers=1, caption_channels=32,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTXVideo(
        in_channels=3, out_channels=3, latent_channels=8, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), decoder_inject_noise=(False,) * 5,
        upsample_residual=(False,) * 4, upsample_factor=(1,) * 4, timestep_conditioning=False,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
    )
    return LTXConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=t5(tokenizer, 32),
        tokenizer=tokenizer, transformer=transformer,
    )


FAMILY = Family(
    name="LTX-Video", pipeline=PIPELINE, role="motion", conditioning="keyframe conditions", multiple_of=32,
    shape=shape, time=Time(step=8, offset=1, fps=25, window=257), adapter=conditions,
    # LTX's VAE decodes all frames at once unless tiled, then 16.
    memory=Memory(spatial=32, temporal=8, patch=(1, 1, 1), decode_frames=0, tiled_frames=16, tile=512,
                  token_bytes=100e3, decode_bytes=400, ref_params=1.9, ref_vae=0.42),
    denoisers=("transformer",),
    twin=Twin("ltx", build_twin, {"patch_size": 1, "patch_size_t": 1}),
)
