"""Wan 2.2 TI2V-5B: image-to-video from the first frame only (a segment moves away from its
keyframe and cuts to the next). It shares WanImageToVideoPipeline with Wan 2.1 and Wan 2.2
A14B, and their components (one transformer, no CLIP image encoder: like an A14B without its
second expert); what tells it apart is the pipeline's own config, `expand_timesteps = true`
(diffusers 0.42 pipelines/wan/pipeline_wan_i2v.py:178, stored by register_to_config at :192;
the published model_index.json of Wan-AI/Wan2.2-TI2V-5B-Diffusers says `"expand_timesteps":
true, "boundary_ratio": null`), hence `requires_config`.

- Conditioning: with expand_timesteps the pipeline conditions on `image` alone and ignores
  `last_image` silently (pipeline_wan_i2v.py:428-429: the condition video is the first frame;
  :464-469: the mask keeps only the first latent frame), so farm never passes an end frame.
- Time: 24 fps, 121 frames (the Wan2.2 repo's wan/configs/wan_ti2v_5B.py: sample_fps 24,
  frame_num 121, where the A14B configs keep shared_config's 16 and 81; see also
  hf.co/Wan-AI/Wan2.2-T2V-A14B-Diffusers/discussions/6 on the Wan 2.2 models' frames and rates).
  Frames 4k+1: the VAE compresses time 4x with a causal first frame (the pipeline
  rounds other counts, :637-642).
- Size: its VAE (Wan 2.2's, z_dim 48) compresses 16x in space (8x by its convolutions after a
  2x2 patchify: `patch_size=2`, `scale_factor_spatial=16`), and the DiT patches (1, 2, 2): sides
  in multiples of 32. The pipeline rounds any other side down to that silently (:644-657;
  check_inputs only asks for 16, :359), so farm refuses them instead. The rotary table
  (rope_max_seq_len 1024) bounds sizes and frame counts as Wan 2.1's does. 720P is 1280x704.
"""

from ..twins import build_tokenizer, t5
from .family import Family, Memory, Time, Twin, first_frame
from .wan21 import PIPELINE, wan_shape

SPATIAL = 16


def shape(config: dict):
    return wan_shape(config, PIPELINE, spatial=SPATIAL, ends=False)


def build_twin(shapes: dict):
    """Wan 2.2 TI2V-5B image-to-video, in the shape of diffusers' own test
    (Wan225BImageToVideoPipelineFastTests): Wan 2.2's residual VAE (z_dim 48, 2x2 patchify,
    16x spatial, 4x temporal), one transformer of 48 channels in and out, no image encoder,
    `expand_timesteps=True`."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )

    tokenizer = build_tokenizer(max_length=64)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=48, in_channels=12, out_channels=12, is_residual=True, patch_size=2,
        latents_mean=[0.0] * 48, latents_std=[1.0] * 48, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
        scale_factor_spatial=SPATIAL, scale_factor_temporal=4, temperal_downsample=[False, True, True],
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        **shapes, num_attention_heads=2, attention_head_dim=16, in_channels=48, out_channels=48,
        text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    )
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=t5(tokenizer, 32, umt5=True), vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), image_processor=None, image_encoder=None,
        transformer=transformer, transformer_2=None, boundary_ratio=None, expand_timesteps=True,
    )


FAMILY = Family(
    name="Wan 2.2 TI2V-5B", pipeline=PIPELINE, role="motion", conditioning="first frame only",
    multiple_of=SPATIAL * 2, shape=shape, time=Time(step=4, offset=1, fps=24, window=121), adapter=first_frame,
    requires_config={"expand_timesteps": True},
    # Wan's causal VAE decodes one latent frame (4 frames) at a time with a feature cache. The 5B
    # DiT is 3072 wide (Wan 2.1 14B: 5120): activations per token scale with the width.
    memory=Memory(spatial=SPATIAL, temporal=4, patch=(1, 2, 2), decode_frames=4, tile=256, token_bytes=90e3,
                  decode_bytes=3500, ref_params=5.0, ref_vae=0.7),
    denoisers=("transformer",),
    twin=Twin("wan22-5b", build_twin, {"patch_size": [1, 2, 2], "rope_max_seq_len": 64}),
)
