"""Stable Diffusion 1.x: text-to-image, a UNet over an 8x VAE (sides in multiples of 8)."""

from ..twins import build_tokenizer, clip_text, vae_8x
from .family import Family, Memory, Shape, Twin

PIPELINE = "StableDiffusionPipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=8)  # the UNet's 8x VAE; no position embedding bounds it


def build_twin(shapes: dict):
    """A Stable Diffusion 1.x-style pipeline: CLIP text encoder, UNet, 8x VAE."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = build_tokenizer(max_length=32)
    text_encoder = clip_text(tokenizer, 32)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = vae_8x(4, sample_size=128)
    scheduler = DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False,
        steps_offset=1
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


FAMILY = Family(
    name="SD 1.x", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=8, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 1, 1), decode_frames=1, tile=512, token_bytes=150e3,
                  decode_bytes=3500, ref_params=0.86, ref_vae=0.084),
    denoisers=("unet",),
    twin=Twin("text-to-image", build_twin),
)
