"""CogVideoX image-to-video: the first frame only (a segment moves away from its keyframe and
cuts to the next). Its 3D-causal VAE compresses 8x in space and 4x in time; the transformer
patches 2x2 (sides in multiples of 16).

Two versions share the pipeline class, told apart by the transformer's config:

- CogVideoX 1.0 (`patch_size_t` unset): 4k+1 frames. diffusers' CogVideoXImageToVideoPipeline
  makes (num_frames - 1) // 4 + 1 latent frames and pads nothing when patch_size_t is None, so
  every 4k+1 count comes out as asked; the model card (THUDM/CogVideoX-5b-I2V) gives 6 s at
  8 fps, 49 frames (= 4 x 12 + 1), its default num_frames. The I2V model's learned position
  embedding takes one size only (sample_width x sample_height latents, 720x480).
- CogVideoX 1.5 (`patch_size_t` 2): 8k+1 frames. The pipeline pads an odd latent count to even
  and drops the padding before decoding, but an even latent count decodes to 4L frames (5 asked
  -> 8 out): only 8k+1 comes out as asked. Its rotary grid is a slice of one sample_width x
  sample_height grid (300 latents: 2400 px a side). Time: the CogVideoX1.5-5B-I2V model card,
  16 fps, 5 s (81 frames) or 10 s.

Without a config to read (weights not pulled), 1.5 as diffusers' conversion script writes it.
"""

from ..twins import build_tokenizer, t5
from .family import Family, Memory, Shape, Time, Twin, first_frame

PIPELINE = "CogVideoXImageToVideoPipeline"
V10_TIME = Time(step=4, offset=1, fps=8, window=49)
V15_TIME = Time(step=8, offset=1, fps=16, window=81)


def is_v10(config: dict) -> bool:
    return bool(config) and config.get("patch_size_t") is None


def shape(config: dict) -> Shape:
    p = config.get("patch_size", 2)
    sw, sh = config.get("sample_width", 300), config.get("sample_height", 300)
    if config.get("use_learned_positional_embeddings"):  # 1.0 I2V: one size only
        return Shape(PIPELINE, step=V10_TIME.step, offset=V10_TIME.offset, multiple=8 * p, min_side=8 * p,
                     fixed=(8 * sw, 8 * sh))
    if is_v10(config):  # 1.0 with rotary positions: any size, a resized crop of the grid
        return Shape(PIPELINE, step=V10_TIME.step, offset=V10_TIME.offset, multiple=8 * p, min_side=8 * p)
    return Shape(PIPELINE, step=V15_TIME.step, offset=V15_TIME.offset, multiple=8 * p, min_side=8 * p,
                 max_width=8 * sw, max_height=8 * sh,
                 why_max=f"its rotary position grid is a slice of {sw // p}x{sh // p} patches "
                         f"(sample_width {sw}, sample_height {sh})")


def native_time(config: dict) -> tuple[float, int]:
    t = V10_TIME if is_v10(config) else V15_TIME
    return t.fps, t.window


def build_twin(shapes: dict):
    """CogVideoX 1.5 image-to-video: 3D-causal VAE (8x spatial, 4x temporal), T5 text, an
    expert transformer with temporal patch 2 and rotary positions (any size, as 1.5 allows)."""
    import torch
    from diffusers import (
        AutoencoderKLCogVideoX,
        CogVideoXDDIMScheduler,
        CogVideoXImageToVideoPipeline,
        CogVideoXTransformer3DModel,
    )

    tokenizer = build_tokenizer(max_length=32)
    torch.manual_seed(0)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=16, in_channels=8, out_channels=4,  # noise + image latents
        time_embed_dim=4, ofs_embed_dim=4, text_embed_dim=32, num_layers=1, **shapes,
        sample_frames=9, temporal_compression_ratio=4, max_text_seq_length=32,
        use_rotary_positional_embeddings=True,
    )
    torch.manual_seed(0)
    vae = AutoencoderKLCogVideoX(
        in_channels=3, out_channels=3, down_block_types=("CogVideoXDownBlock3D",) * 4,
        up_block_types=("CogVideoXUpBlock3D",) * 4, block_out_channels=(8, 8, 8, 8), latent_channels=4,
        layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4,
    )
    return CogVideoXImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=t5(tokenizer, 32), vae=vae, transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing", snr_shift_scale=1.0),
    )


FAMILY = Family(
    name="CogVideoX", pipeline=PIPELINE, role="motion", conditioning="first frame only", multiple_of=16,
    shape=shape, time=V15_TIME, native_time=native_time, adapter=first_frame,
    # 1.5's patch (2, 2, 2); its VAE decodes 2 latent frames (8 frames) at a time.
    memory=Memory(spatial=8, temporal=4, patch=(2, 2, 2), decode_frames=8, tile=300, token_bytes=200e3,
                  decode_bytes=4500, ref_params=5.6, ref_vae=0.216),
    denoisers=("transformer",),
    # recipe 2: its rotary grid covers 128x128 (at 1 it stopped at 32x32, below its own default).
    twin=Twin("cogvideox", build_twin, {"patch_size": 2, "patch_size_t": 2, "sample_width": 16,
                                               "sample_height": 16, "use_learned_positional_embeddings": False},
              version=2),
)
