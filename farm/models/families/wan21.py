"""Wan 2.1 (FLF2V): image-to-video from a first and a last frame. Its VAE compresses 8x in space
and 4x in time with a causal first frame (4k+1 frames); the DiT patches (1, 2, 2), so sides are
multiples of 16; rotary positions are precomputed for rope_max_seq_len steps on each axis (1024
in Wan 2.1), which bounds sizes and frame counts. Time: Wan2.1/2.2 shared_config.py, sample_fps
16 and frame_num 81."""

from contextlib import contextmanager

from ..twins import build_tokenizer, t5
from .family import Family, Memory, Shape, Time, Twin, first_and_last_frame

PIPELINE = "WanImageToVideoPipeline"


def wan_shape(config: dict, pipeline: str = PIPELINE, spatial: int = 8, ends: bool = True) -> Shape:
    """The size and frame rule of a Wan DiT (and of the families built on it) over a VAE that
    compresses `spatial`x in space and 4x in time: sides in multiples of spatial x patch, and
    no more positions per axis than its rotary table holds."""
    patch = config.get("patch_size", [1, 2, 2])
    rope = config.get("rope_max_seq_len", 1024)
    return Shape(pipeline, step=4 * patch[0], offset=1, multiple=spatial * patch[1], min_side=spatial * patch[1],
                 max_width=spatial * patch[2] * rope, max_height=spatial * patch[1] * rope,
                 max_frames=4 * (rope - 1) + 1, ends=ends,
                 why_max=f"its rotary embedding covers {rope} positions per axis")


def shape(config: dict) -> Shape:
    return wan_shape(config)


@contextmanager
def one_image_twice(pipe, last):
    """Wan 2.1 FLF2V's image embedder takes the CLIP tokens of two pictures (first and last
    frame), and diffusers refuses `image_embeds` next to `image`. A clip with no end frame
    (the first or a middle clip of a chain) is conditioned on its first frame's pixels only,
    and gives its CLIP tokens twice, for the first and for the (absent) last. (Wan 2.2 has no
    image encoder: nothing to do.)"""
    embedder = getattr(getattr(getattr(pipe, "transformer", None), "condition_embedder", None), "image_embedder", None)
    if last is not None or getattr(embedder, "pos_embed", None) is None or getattr(pipe, "image_encoder", None) is None:
        yield
        return
    encode = pipe.encode_image

    def twice(image, device=None):
        return encode(image if isinstance(image, list) else [image, image], device)

    pipe.encode_image = twice
    try:
        yield
    finally:
        del pipe.encode_image  # the class's method again


def build_twin(shapes: dict):
    """A Wan 2.1 first/last-frame-to-video pipeline: UMT5, CLIP vision, Wan DiT, Wan VAE."""
    import torch
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    tokenizer = build_tokenizer(max_length=64)
    text_encoder = t5(tokenizer, 32, umt5=True)
    torch.manual_seed(0)
    vae = AutoencoderKLWan(
        base_dim=8, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True]
    )
    torch.manual_seed(0)
    transformer = WanTransformer3DModel(
        **shapes,
        num_attention_heads=2,
        attention_head_dim=16,
        in_channels=36,  # 16 noise + 4 mask + 16 conditioning latents
        out_channels=16,
        text_dim=32,
        freq_dim=64,
        ffn_dim=64,
        num_layers=2,
        cross_attn_norm=True,
        qk_norm="rms_norm_across_heads",
        image_dim=16,
        pos_embed_seq_len=2 * 17,  # first + last frame, 17 CLIP tokens each (FLF2V)
    )
    torch.manual_seed(0)
    image_encoder = CLIPVisionModel(
        CLIPVisionConfig(
            hidden_size=16,
            projection_dim=16,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            intermediate_size=32,
            patch_size=8,
        )
    )
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    return WanImageToVideoPipeline(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        vae=vae,
        scheduler=scheduler,
        image_processor=image_processor,
        image_encoder=image_encoder,
        transformer=transformer,
    )


FAMILY = Family(
    name="Wan 2.1", pipeline=PIPELINE, role="motion", conditioning="first and last frame", multiple_of=16,
    shape=shape, time=Time(step=4, offset=1, fps=16, window=81), adapter=first_and_last_frame, around=one_image_twice,
    # Wan's causal VAE decodes one latent frame (4 frames) at a time with a feature cache.
    memory=Memory(spatial=8, temporal=4, patch=(1, 2, 2), decode_frames=4, tile=256, token_bytes=150e3,
                  decode_bytes=3500, ref_params=14.3, ref_vae=0.127),
    denoisers=("transformer",),
    twin=Twin("image-to-video", build_twin, {"patch_size": [1, 2, 2], "rope_max_seq_len": 64}),
)
