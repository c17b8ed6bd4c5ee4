"""SkyReels-V2 image-to-video (SkyReelsV2ImageToVideoPipeline): Wan 2.1's architecture, trained
further by Skywork: UMT5 text, CLIP vision, a Wan DiT (SkyReelsV2Transformer3DModel, patches
(1, 2, 2), rotary positions for rope_max_seq_len steps per axis), Wan 2.1's VAE (8x in space,
4x in time with a causal first frame) and a UniPC scheduler.

- Conditioning: the first frame only (a segment moves away from its keyframe and cuts to the
  next). The pipeline takes a `last_image` (diffusers 0.42
  pipelines/skyreels_v2/pipeline_skyreels_v2_i2v.py:407-415, 636-643), copied from Wan 2.1
  FLF2V, but it encodes both pictures with CLIP as a batch of two (:642), which only a
  transformer with FLF2V's `pos_embed_seq_len` folds into one sequence; the published I2V
  models have none (diffusers' scripts/convert_skyreelsv2_to_diffusers.py: image_dim 1280,
  added_kv_proj_dim 5120, no pos_embed_seq_len), so a call with an end frame fails on the batch
  (the twin, built that way, shows it), and diffusers' own FLF2V test of it is marked "the
  original repo doesn't seem to have this functionality". The I2V models were trained on first
  frames.
- Time: 24 fps (the SkyReels-V2 README: `--fps 24`; the pipeline's example exports at fps=24,
  :60-92); 97 frames at 540P, 121 at 720P (README: "97 for 540P, 121 for 720P"; the pipeline's
  default num_frames 97). Frames 4k+1 (the pipeline rounds other counts, :598-602).
- Size: sides in multiples of 16 (8x VAE x 2x2 patches; check_inputs, :345-346), bounded by the
  rotary table as Wan 2.1's.
"""

from ..twins import build_tokenizer, t5
from .family import Family, Time, Twin, first_frame
from .wan21 import FAMILY as WAN21, wan_shape

PIPELINE = "SkyReelsV2ImageToVideoPipeline"


def shape(config: dict):
    return wan_shape(config, PIPELINE, spatial=8, ends=False)


def build_twin(shapes: dict):
    """A SkyReels-V2 image-to-video pipeline as farm's Wan 2.1 twin, with SkyReels' transformer
    (image cross-attention: image_dim and added_kv_proj_dim, no FLF2V position embedding, as
    the published I2V models), a CLIP vision tower with projection, and UniPC."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        SkyReelsV2ImageToVideoPipeline,
        SkyReelsV2Transformer3DModel,
        UniPCMultistepScheduler,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer = build_tokenizer(max_length=64)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    transformer = SkyReelsV2Transformer3DModel(
        **shapes, num_attention_heads=2, attention_head_dim=16,
        in_channels=36,  # 16 noise + 4 mask + 16 conditioning latents
        out_channels=16, text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", image_dim=16, added_kv_proj_dim=32,  # the model's width, as 5120 in 14B
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=32, patch_size=8,
    ))
    return SkyReelsV2ImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=t5(tokenizer, 32, umt5=True), image_encoder=image_encoder,
        image_processor=CLIPImageProcessor(crop_size=32, size=32), transformer=transformer, vae=vae,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=5.0),
    )


FAMILY = Family(
    name="SkyReels-V2", pipeline=PIPELINE, role="motion", conditioning="first frame only", multiple_of=16,
    shape=shape, time=Time(step=4, offset=1, fps=24, window=97), adapter=first_frame,
    memory=WAN21.memory,  # Wan 2.1's DiT and VAE, and so its rule
    denoisers=("transformer",),
    twin=Twin("skyreels-v2", build_twin, {"patch_size": [1, 2, 2], "rope_max_seq_len": 64}),
)
