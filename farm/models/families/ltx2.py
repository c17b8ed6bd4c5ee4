"""LTX-2 (LTX2ConditionPipeline): video with its sound, keyframes as conditions at latent frames.

diffusers 0.42.1, pipelines/ltx2/pipeline_ltx2_condition.py: `LTX2VideoCondition(frames, index,
strength, crf)` (127-153) puts a picture at a *latent* frame index (-1: the last one). Sides
must be multiples of 32 (529-530) and frames are 8k+1: the video VAE compresses 32x in space
and 8x in time, `(num_frames - 1) // 8 + 1` latent frames (1717); the transformer patches
(1, 1, 1). Call defaults (1350-1397): 768x512, `num_frames` None -> 121 (1642-1645),
`frame_rate` 24.0, 30 steps, guidance 3.0 (plus STG 1.0 and modality guidance 3.0; audio 7.0,
1.0, 3.0). Time: 24 fps (the call's default, which the model card's examples keep) and 121
frames (5 s), the default clip; the model card allows longer clips (up to 257 frames, 8k+1).

Sound: each call returns `LTX2PipelineOutput(frames, audio)`, `audio` a tensor (batch, 2,
samples) at the vocoder's `output_sampling_rate` (2116-2118; 24000 Hz for LTX-2): the family
says `sound=True` and its `sound` function hands the waveform to farm (farm/models/pipeline.py).

Each condition is re-encoded with H.264 at the model's CRF before the VAE sees it unless
`crf=0` (utils.py:326-357; the LTX-2 training pictures were compressed so): that needs PyAV,
which farm does not install, and farm's keyframes are lossless PNGs already, so farm passes
`crf=0` (the pictures are taken as they are)."""

from ..twins import build_tokenizer
from .family import Family, Memory, Shape, Time, Twin

PIPELINE = "LTX2ConditionPipeline"


def shape(config: dict) -> Shape:
    """Patch (1, 1, 1) and the VAE's 32x / 8x (the transformer's `vae_scale_factors`, (8, 32,
    32) in LTX-2): sides in multiples of 32, frames 8k+1. At least two latent pixels a side
    (64 px): the video decoder pads its input by reflection (AutoencoderKLLTX2Video's
    `decoder_spatial_padding_mode` "reflect"), which a 1-pixel latent cannot take (32 px fails
    in torch's pad: "Padding size should be less than the corresponding input dimension")."""
    t, h, _ = config.get("vae_scale_factors", (8, 32, 32))
    p, pt = config.get("patch_size", 1), config.get("patch_size_t", 1)
    return Shape(PIPELINE, step=t * pt, offset=1, multiple=h * p, min_side=2 * h * p, ends=True)


def conditions(params, first, last, generated):
    """The keyframes as LTX2VideoConditions at latent frame 0 and at the last one (-1), each
    with `crf=0` (no H.264 round trip: see the module's docstring), and the model's rate (at
    which farm generates) as `frame_rate`: LTX-2 conditions motion and sound on it."""
    from diffusers.pipelines.ltx2.pipeline_ltx2_condition import LTX2VideoCondition

    items = [LTX2VideoCondition(frames=first, index=0, strength=1.0, crf=0)]
    if last is not None:
        items.append(LTX2VideoCondition(frames=last, index=-1, strength=1.0, crf=0))
    return {"conditions": items, "frame_rate": float(params["model_fps"])}


def sound(pipe, out):
    """The call's soundtrack: its first video's waveform, (channels, samples) floats in
    [-1, 1], and its sample rate, the vocoder's `output_sampling_rate`."""
    import numpy as np

    audio = out.audio[0]
    audio = audio.float().cpu().numpy() if hasattr(audio, "cpu") else np.asarray(audio, dtype=np.float32)
    return audio.reshape(-1, audio.shape[-1]), int(pipe.vocoder.config.output_sampling_rate)


def build_twin(shapes: dict):
    """LTX-2 after diffusers' tests/pipelines/ltx2/test_ltx2_condition.py, with the real
    video VAE's layout (patch 4, a spatial, a temporal and two spatio-temporal downsamples:
    32x / 8x, so 8k+1 frames and sides in 32s hold as for LTX-2), a 2-layer Gemma 3 text
    encoder, the text connectors, the audio VAE and vocoder, all 4-32 channels wide."""
    import torch
    from diffusers import (
        AutoencoderKLLTX2Audio,
        AutoencoderKLLTX2Video,
        FlowMatchEulerDiscreteScheduler,
        LTX2ConditionPipeline,
        LTX2VideoTransformer3DModel,
    )
    from diffusers.pipelines.ltx2 import LTX2TextConnectors, LTX2Vocoder
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    tokenizer = build_tokenizer(max_length=64)
    hidden, layers = 32, 2
    torch.manual_seed(0)
    text_encoder = Gemma3ForConditionalGeneration(Gemma3Config(
        text_config={
            "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 64,
            "num_hidden_layers": layers, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 16,
            "query_pre_attn_scalar": 16, "sliding_window": 16, "max_position_embeddings": 128,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 3,
        },
        vision_config={"model_type": "siglip_vision_model", "hidden_size": 16, "intermediate_size": 32,
                       "num_hidden_layers": 1, "num_attention_heads": 2, "image_size": 8, "patch_size": 2},
        mm_tokens_per_image=4, boi_token_index=1, eoi_token_index=3, image_token_index=2,
    ))
    torch.manual_seed(0)
    transformer = LTX2VideoTransformer3DModel(
        **shapes, in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, audio_in_channels=4, audio_out_channels=4, audio_num_attention_heads=2,
        audio_attention_head_dim=4, audio_cross_attention_dim=8, num_layers=2, caption_channels=hidden,
        rope_double_precision=False, rope_type="split",
    )
    torch.manual_seed(0)
    connectors = LTX2TextConnectors(
        caption_channels=hidden, text_proj_in_factor=layers + 1,
        video_connector_num_attention_heads=4, video_connector_attention_head_dim=8,
        video_connector_num_layers=1, video_connector_num_learnable_registers=None,
        audio_connector_num_attention_heads=4, audio_connector_attention_head_dim=8,
        audio_connector_num_layers=1, audio_connector_num_learnable_registers=None,
        connector_rope_base_seq_len=32, rope_theta=10000.0, rope_double_precision=False, rope_type="split",
    )
    torch.manual_seed(0)
    vae = AutoencoderKLLTX2Video(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(8, 8, 8, 8),
        decoder_block_out_channels=(8, 8, 8), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, True),
        decoder_spatio_temporal_scaling=(True, True, True), decoder_inject_noise=(False,) * 4,
        downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
        upsample_type=("spatiotemporal", "spatiotemporal", "spatiotemporal"),
        upsample_residual=(False,) * 3, upsample_factor=(1,) * 3, timestep_conditioning=False,
        patch_size=4, patch_size_t=1, encoder_causal=True, decoder_causal=False,
        spatial_compression_ratio=32, temporal_compression_ratio=8,
    )
    torch.manual_seed(0)
    audio_vae = AutoencoderKLLTX2Audio(
        base_channels=4, output_channels=2, ch_mult=(1,), num_res_blocks=1, attn_resolutions=None,
        in_channels=2, resolution=32, latent_channels=2, norm_type="pixel", causality_axis="height",
        dropout=0.0, mid_block_add_attention=False, sample_rate=16000, mel_hop_length=160, is_causal=True,
        mel_bins=8,
    )
    torch.manual_seed(0)  # 160x upsampling of 100 mel frames a second (16000 / hop 160): 16 kHz, as it says
    vocoder = LTX2Vocoder(
        in_channels=2 * 8, hidden_channels=32, out_channels=2, upsample_kernel_sizes=[20, 32],
        upsample_factors=[10, 16], resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]],
        leaky_relu_negative_slope=0.1, output_sampling_rate=16000,
    )
    return LTX2ConditionPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, audio_vae=audio_vae, text_encoder=text_encoder,
        tokenizer=tokenizer, connectors=connectors, transformer=transformer, vocoder=vocoder,
    )


FAMILY = Family(
    name="LTX-2", pipeline=PIPELINE, role="motion", conditioning="keyframe conditions", multiple_of=32,
    shape=shape, time=Time(step=8, offset=1, fps=24, window=121), adapter=conditions, sound=sound,
    # The video VAE decodes all frames at once unless tiled (then 16 at a time, as LTX-Video's).
    memory=Memory(spatial=32, temporal=8, patch=(1, 1, 1), decode_frames=0, tiled_frames=16, tile=512,
                  token_bytes=200e3, decode_bytes=400, ref_params=19.0, ref_vae=0.5),
    denoisers=("transformer",),
    twin=Twin("ltx2", build_twin, {"patch_size": 1, "patch_size_t": 1}),
)
