"""HunyuanVideo FramePack (HunyuanVideoFramepackPipeline): image-to-video by next-frame-section
prediction on HunyuanVideo's 13B DiT (lllyasviel/FramePackI2V_HY). One call generates a whole
video section by section, each section denoised against a history packed to a fixed length, so
a call's memory does not grow with its length. References below are to diffusers 0.42.1,
pipelines/hunyuan_video/pipeline_hunyuan_video_framepack.py, and to lllyasviel/FramePack.

- Conditioning: first and last frame. `image` starts the video; `last_image` (only with
  `sampling_type="inverted_anti_drifting"`, the default: :515-519 refuse it otherwise) is
  taken as the clean history of the first section denoised, which inverted sampling places at
  the video's end (:893-894; its SigLIP embedding is computed and averaged with the first's,
  :808-813, but the transformer is given the first image's alone, :962, 982).
- Sections: `latent_window_size` L (default 9, :599; FramePack's demo_gradio.py hides it as
  "Should not change") latent frames per section. A request of `num_frames` makes
  S = ceil(num_frames / ((L-1)x4+1)) sections (:817-818). Each section's latents are decoded
  and blended into the video with an overlap of (L-1)x4+1 frames (:1036-1056, `_soft_append`
  :1079-1090): the first decode gives 4L-3 frames, each middle section adds 4L, the last
  (which prepends the first frame's latent, :1016-1017) adds 4L+4, so the video has
  4L x S + 1 frames (one section alone: L+1 latents, 4L+1 frames), which the final trim
  (:1061-1066) keeps. The call returns 4L x S + 1 frames, not `num_frames`: the defaults (129
  asked, L=9) make 145, diffusers' own test (num_frames 9, L 3) makes 13. FramePack's demo
  counts the same way (sections = seconds x 30 / 4L, demo_gradio.py `worker`). So farm's frame
  rule is 1 + 4L x k (36k+1 at L=9: one step of the rule is one section, 1.2 s at 30 fps,
  `Time.section`), and `call_frames` asks for k sections as num_frames = k x ((L-1)x4+1)
  (33k), which the tests check the twin turns into exactly 36k+1 frames. farm passes no
  `latent_window_size` (the call's default, 9); a preset that set another in [options] would
  break the rule, and farm refuses the call's result (farm/models/pipeline.py `clip`).
- Time: 30 fps (the docstring's examples export at fps=30, :97 and :145; demo_gradio.py saves at
  fps=30). Window: because the call packs sections itself, farm's window is not a trained clip
  length but the longest video one call is known to make: the FramePack README's one-minute
  video "(60 seconds) at 30fps (1800 frames)", 1801 = 36 x 50 + 1 frames. A segment up to a
  minute is one call, conditioned on both of its keyframes; a longer one becomes a chain of
  such calls by farm's usual rule (each next call starts on the last frame of the one before,
  only the last ends on the next keyframe). A preset's `max_frames` lowers it.
- Size: sides in multiples of 16 (check_inputs, :470: 8x VAE, 2x2 patches). Its rotary
  positions are computed for the frame indices and grid they are given
  (HunyuanVideoFramepackRotaryPosEmbed), so no table bounds sizes or lengths.
- Guidance: `guidance_scale` is embedded guidance, a transformer input (:864; the model is
  guidance-distilled, FramePack's "Distilled CFG Scale", 10 in its demo). The negative prompt
  only counts with `true_cfg_scale` > 1 (:753), which FramePack's demo fixes at 1 ("Should
  not change"), so farm passes none and refuses one (`negative`).
- Memory: the denoiser sees one section at a time: L noisy latent frames plus the packed history
  (the first frame's latent and 1 history latent at full resolution, 2 at 2x and 16 at 4x
  compression, which the transformer's clean_x_embedder patches (2,4,4) and (4,8,8): 1/8 and
  1/64 of the tokens each): 9 + 2 + 2/8 + 16/64 = 11.5 latent frames' tokens, as a 45-frame
  clip's 12 (`Memory.section_frames`). The VAE (AutoencoderKLHunyuanVideo) decodes in
  16-frame temporal tiles by default (models/autoencoders/autoencoder_kl_hunyuan_video.py:712,
  717 and 811: `use_framewise_decoding`, tile_sample_min_num_frames 16).
  The decoded video is held on the device as it grows (3 channels per pixel per frame, in the
  VAE's dtype: 4.4 GB for a minute at 640x640 in bf16); the rule does not count it.
"""

from .family import Family, Memory, Shape, Time, Twin, embedded_guidance, first_and_last_frame

PIPELINE = "HunyuanVideoFramepackPipeline"
WINDOW = 9  # latent frames per section: the call's default latent_window_size, FramePack's only one
TEMPORAL = 4  # the VAE's time compression (causal first frame)
STEP = TEMPORAL * WINDOW  # frames one section adds: 36
SECTION_REQUEST = (WINDOW - 1) * TEMPORAL + 1  # num_frames that asks for one section: 33


def shape(config: dict) -> Shape:
    """Frames 1 + 36k (k sections); sides in multiples of VAE x patch (16)."""
    patch = config.get("patch_size", 2)
    return Shape(PIPELINE, step=STEP * config.get("patch_size_t", 1), offset=1, multiple=8 * patch,
                 min_side=8 * patch, ends=True)


def call_frames(frames: int) -> int:
    """The `num_frames` that makes a call return `frames` = 1 + 36k frames: k sections, asked
    as k x 33 (any count in (33(k-1), 33k] asks for k)."""
    return (frames - 1) // STEP * SECTION_REQUEST


def build_twin(shapes: dict):
    """HunyuanVideo FramePack image-to-video in the shape of diffusers' own test
    (HunyuanVideoFramepackPipelineFastTests): a two-layer LLaMA and a CLIP text model under
    byte-level tokenizers, a one-layer SigLIP vision tower, the FramePack transformer (image
    projection, history embedders) and HunyuanVideo's causal VAE (8x in space, 4x in time).
    The tiny tokenizer has no LLaMA chat template: its preset passes
    `prompt_template = {template = "{}", crop_start = 0}` as diffusers' test does. Its VAE is
    narrower than the test's (4 channels, no mid-block attention): a minute is 51 sections,
    and the time sweep renders one past it on a CPU."""
    import torch
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoFramepackPipeline,
        HunyuanVideoFramepackTransformer3DModel,
    )
    from transformers import LlamaConfig, LlamaModel, SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    from ..twins import build_tokenizer, clip_text

    tokenizer = build_tokenizer(max_length=64)
    tokenizer_2 = build_tokenizer(max_length=77)  # CLIP's 77 tokens (the pipeline pads to them)
    torch.manual_seed(0)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=16, intermediate_size=37, num_attention_heads=4,
        num_hidden_layers=2, max_position_embeddings=512, pad_token_id=0, bos_token_id=1, eos_token_id=3,
    ))  # the pipeline takes hidden_states[-3]: two layers and the embeddings
    text_encoder_2 = clip_text(tokenizer_2, 8)
    torch.manual_seed(0)
    image_encoder = SiglipVisionModel(SiglipVisionConfig(
        hidden_size=32, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4, image_size=30, patch_size=2,
    ))
    feature_extractor = SiglipImageProcessor(size={"height": 30, "width": 30})
    torch.manual_seed(0)
    transformer = HunyuanVideoFramepackTransformer3DModel(
        **shapes, in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=10, num_layers=1,
        num_single_layers=1, num_refiner_layers=1, text_embed_dim=16, pooled_projection_dim=8,
        rope_axes_dim=(2, 4, 4), has_image_proj=True, image_proj_dim=32, has_clean_x_embedder=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLHunyuanVideo(
        in_channels=3, out_channels=3, latent_channels=4,
        down_block_types=("HunyuanVideoDownBlock3D",) * 4, up_block_types=("HunyuanVideoUpBlock3D",) * 4,
        block_out_channels=(4, 4, 4, 4), layers_per_block=1, act_fn="silu", norm_num_groups=2,
        scaling_factor=0.476986, spatial_compression_ratio=8, temporal_compression_ratio=TEMPORAL,
        mid_block_add_attention=False,
    )
    return HunyuanVideoFramepackPipeline(
        text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer, vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0), text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2,
        image_encoder=image_encoder, feature_extractor=feature_extractor,
    )


FAMILY = Family(
    name="HunyuanVideo FramePack", pipeline=PIPELINE, role="motion", conditioning="first and last frame",
    multiple_of=16, shape=shape, adapter=first_and_last_frame, guidance=embedded_guidance, negative=False,
    time=Time(step=STEP, offset=1, fps=30, window=STEP * 50 + 1, section=WINDOW), call_frames=call_frames,
    # HunyuanVideo's DiT is 3072 wide (as Wan 2.2 TI2V-5B's, whose per-token figure it takes);
    # each call of it sees one section (45 frames' tokens, above); the VAE decodes 16 frames at
    # a time (framewise), in 256-pixel tiles when tiled.
    memory=Memory(spatial=8, temporal=TEMPORAL, patch=(1, 2, 2), decode_frames=16, tile=256, token_bytes=90e3,
                  decode_bytes=3500, ref_params=13.0, ref_vae=0.246, section_frames=45),
    denoisers=("transformer",),
    twin=Twin("framepack", build_twin, {"patch_size": 2, "patch_size_t": 1}),
)
