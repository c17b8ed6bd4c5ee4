"""SDXL: text-to-image, two CLIP encoders, a UNet with size conditioning over an 8x VAE."""

from ..twins import build_tokenizer, clip_text, vae_8x
from .family import Family, Memory, Shape, Twin

PIPELINE = "StableDiffusionXLPipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=8)


def build_twin(shapes: dict):
    """SDXL: two CLIP text encoders (the second with projection), a UNet with text-time
    conditioning (crop and size embeddings), 8x VAE, Euler scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = build_tokenizer(max_length=32)
    text_encoder = clip_text(tokenizer, 32)
    text_encoder_2 = clip_text(tokenizer, 32, projection=True)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        norm_num_groups=8, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4), use_linear_projection=True,
        addition_embed_type="text_time", addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=6 * 8 + 32,  # six size/crop numbers x 8 + pooled text (32)
        cross_attention_dim=64,  # both encoders' hidden states side by side: 32 + 32
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
        timestep_spacing="leading",
    )
    return StableDiffusionXLPipeline(
        vae=vae_8x(4, force_upcast=False), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=build_tokenizer(max_length=32), unet=unet, scheduler=scheduler,
    )


FAMILY = Family(
    name="SDXL", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=8, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 1, 1), decode_frames=1, tile=1024, token_bytes=200e3,
                  decode_bytes=3500, ref_params=2.57, ref_vae=0.084),
    denoisers=("unet",),
    twin=Twin("sdxl", build_twin),
)
