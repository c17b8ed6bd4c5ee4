"""Tiny random-weight pipelines built in code: the embedded default models.

Each builder returns a real diffusers pipeline of a real family, with every
component (tokenizer included) constructed locally from a fixed seed, so no
download is ever needed. `farm.models` saves the result with `save_pretrained`
and always loads it back with `from_pretrained`, so the loading path that a real
model takes is the one that runs. They draw noise, not pictures.

Each family (farm/models/families/) names its twin's builder here, the shapes it is built with and
its recipe version, which is part of every task key that uses the model: bump it when a
builder changes, so old cached outputs are not mistaken for new ones.
"""

from __future__ import annotations

# Byte-level alphabet with a few specials; no merges, so every byte is a token.
_SPECIALS = ["<pad>", "<bos>", "<unk>", "<eos>"]


def build_tokenizer(max_length: int):
    """A byte-level BPE tokenizer with no merges, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(_SPECIALS + sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.TemplateProcessing(
        single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 3)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        unk_token="<unk>",
        eos_token="<eos>",
        model_max_length=max_length,
    )


def build_text_to_image(shapes: dict):
    """A Stable Diffusion 1.x-style pipeline: CLIP text encoder, UNet, 8x VAE."""
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    tokenizer = build_tokenizer(max_length=32)
    text_encoder = _clip_text(tokenizer, 32)
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
    vae = _vae_8x(4, sample_size=128)
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


def build_image_to_video(shapes: dict):
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
    text_encoder = _t5(tokenizer, 32, umt5=True)
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



# --- one twin per family the presets cover ---------------------------------------------------
# Each twin keeps its family's pipeline class, component classes and the shape rules that
# decide which sizes and frame counts work (VAE compression, patch sizes, packed latents),
# with every width cut to 8-32 channels and 1-2 layers: a build plus a 32-64 px, 2-step
# call takes a few seconds on a 2-core CPU.


def _clip_text(tokenizer, hidden: int, projection: bool = False):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
        pad_token_id=0, bos_token_id=1, eos_token_id=3,  # not 2: CLIP treats eos id 2 as the legacy argmax pooling
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def _t5(tokenizer, d_model: int, umt5: bool = False):
    import torch
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    torch.manual_seed(0)
    return model_cls(config_cls(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0,
    ))


def _vae_8x(latent_channels: int, sample_size: int = 64, **kw):
    """An AutoencoderKL with three downsamples (8x), like SD, SDXL, SD3 and Flux."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, latent_channels=latent_channels, sample_size=sample_size, **kw,
    )


def build_sdxl(shapes: dict):
    """SDXL: two CLIP text encoders (the second with projection), a UNet with text-time
    conditioning (crop and size embeddings), 8x VAE, Euler scheduler."""
    import torch
    from diffusers import EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel

    tokenizer = build_tokenizer(max_length=32)
    text_encoder = _clip_text(tokenizer, 32)
    text_encoder_2 = _clip_text(tokenizer, 32, projection=True)
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
        vae=_vae_8x(4, force_upcast=False), text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizer, tokenizer_2=build_tokenizer(max_length=32), unet=unet, scheduler=scheduler,
    )


def build_sd3(shapes: dict):
    """SD 3.x: MMDiT transformer (patch 2), two CLIPs with projection plus T5, 16-channel 8x VAE."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline

    tokenizer = build_tokenizer(max_length=32)
    torch.manual_seed(0)
    transformer = SD3Transformer2DModel(
        **shapes, sample_size=8, in_channels=16, out_channels=16, num_layers=2, attention_head_dim=8,
        num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=64, pooled_projection_dim=32,
    )
    return StableDiffusion3Pipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae_8x(16, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.0609, scaling_factor=1.5035),
        text_encoder=_clip_text(tokenizer, 16, projection=True), tokenizer=tokenizer,
        text_encoder_2=_clip_text(tokenizer, 16, projection=True), tokenizer_2=build_tokenizer(max_length=32),
        text_encoder_3=_t5(tokenizer, 64), tokenizer_3=build_tokenizer(max_length=64),
    )


def build_flux(shapes: dict):
    """FLUX.1: double- and single-stream transformer over 2x2-packed latents (16 channels in,
    from a 4-channel 8x VAE), CLIP pooled plus T5 text, guidance embedding (as FLUX.1-dev)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    tokenizer = build_tokenizer(max_length=32)
    torch.manual_seed(0)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16,
        num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, guidance_embeds=True,
        axes_dims_rope=(4, 4, 8),  # sums to attention_head_dim
    )
    return FluxPipeline(
        transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=_vae_8x(4, use_quant_conv=False, use_post_quant_conv=False, shift_factor=0.1159, scaling_factor=0.3611),
        text_encoder=_clip_text(tokenizer, 32), tokenizer=tokenizer,
        text_encoder_2=_t5(tokenizer, 32), tokenizer_2=build_tokenizer(max_length=64),
    )


def build_wan22(shapes: dict):
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
        tokenizer=tokenizer, text_encoder=_t5(tokenizer, 32, umt5=True), vae=vae,
        scheduler=FlowMatchEulerDiscreteScheduler(shift=5.0), image_processor=None, image_encoder=None,
        transformer=experts[0], transformer_2=experts[1], boundary_ratio=0.9,  # Wan2.2-I2V-A14B's value
    )


def build_ltx(shapes: dict):
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
        scheduler=FlowMatchEulerDiscreteScheduler(), vae=vae, text_encoder=_t5(tokenizer, 32),
        tokenizer=tokenizer, transformer=transformer,
    )


def build_cogvideox(shapes: dict):
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
        tokenizer=tokenizer, text_encoder=_t5(tokenizer, 32), vae=vae, transformer=transformer,
        scheduler=CogVideoXDDIMScheduler(timestep_spacing="trailing", snr_shift_scale=1.0),
    )
