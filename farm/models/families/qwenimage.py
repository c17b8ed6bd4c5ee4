"""Qwen-Image: text-to-image, a 60-block MMDiT over 2x2-packed latents of an 8x video-style VAE
(a single frame), its text from Qwen2.5-VL's last hidden state. Sides in multiples of 16.

Verified in diffusers 0.42.1, pipelines/qwenimage/pipeline_qwenimage.py: components
scheduler / vae (AutoencoderKLQwenImage) / text_encoder (Qwen2_5_VLForConditionalGeneration) /
tokenizer (Qwen2Tokenizer) / transformer (QwenImageTransformer2DModel) (153-168);
vae_scale_factor = 2 ** len(vae.temperal_downsample) (8) and the image processor works on
multiples of 16 (170-173); other sizes are only warned about and resized (283-285), so farm
refuses them at validation instead. Prompts go into a chat template whose first 34 tokens
(the system prompt's head) are dropped from the text encoder's output (175-176, 190-215).
Guidance: the transformer has no guidance embedding (guidance_embeds False; a
`guidance_scale` is ignored with a warning, 618-628); the model is guided by true CFG,
`true_cfg_scale`, which runs only when a negative prompt is given (553-564; 471: "even an empty
negative prompt like ' '", as the model card passes). So a spec's guidance becomes
`true_cfg_scale` and its negative prompt (" " when it gives none) is passed. The CFG call is a
second transformer call, not a batch of two (656-668): the memory rule has no CFG batch.
Rotary positions (transformer_qwenimage.py:199-221, 4096 a side, centred) bound no size farm
takes (8192 px is 512 latent tokens a side).
"""

from ..twins import build_tokenizer
from .family import Family, Memory, Shape, Twin

PIPELINE = "QwenImagePipeline"


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=8 * config.get("patch_size", 2))  # 8x VAE, latents packed 2x2


def true_cfg(params: dict) -> dict:
    """The spec's guidance as true CFG (`true_cfg_scale`), with the negative prompt that turns it
    on: the spec's, else " " (the model card's); guidance <= 1 runs without CFG (and without a
    negative prompt, which the pipeline would warn it ignores)."""
    guided = params["guidance"] > 1
    return {"true_cfg_scale": params["guidance"],
            "negative_prompt": params["negative_prompt"] or (" " if guided else None)}


def build_twin(shapes: dict):
    """Qwen-Image: the MMDiT (patch 2, 16 packed channels from a 4-channel 8x VAE), the
    Qwen2.5-VL text encoder (mrope sections summing to head_dim / 2) under the byte-level
    tokenizer (its chat template's first 34 tokens are dropped, as the real one's), true CFG."""
    import torch
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImagePipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = build_tokenizer(max_length=1024)
    vocab = len(tokenizer)
    torch.manual_seed(0)
    text_encoder = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(
        text_config={
            "hidden_size": 16, "intermediate_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2,
            "num_key_value_heads": 2, "rope_theta": 1e6, "vocab_size": vocab,
            "rope_scaling": {"mrope_section": [1, 1, 2], "rope_type": "default", "type": "default"},
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 3,
        },
        vision_config={"depth": 2, "hidden_size": 16, "intermediate_size": 16, "num_heads": 2, "out_hidden_size": 16},
        hidden_size=16, vocab_size=vocab,
    ))
    torch.manual_seed(0)
    transformer = QwenImageTransformer2DModel(
        **shapes, in_channels=16, out_channels=4, num_layers=2, attention_head_dim=16, num_attention_heads=3,
        joint_attention_dim=16, axes_dims_rope=(8, 4, 4),  # sums to attention_head_dim
    )
    torch.manual_seed(0)
    vae = AutoencoderKLQwenImage(  # three downsamples: 8x, as the real one (the test twin of diffusers is 4x)
        base_dim=8, z_dim=4, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True],
        latents_mean=[0.0] * 4, latents_std=[1.0] * 4,
    )
    return QwenImagePipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )


FAMILY = Family(
    name="Qwen-Image", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=16, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 2, 2), decode_frames=1, tile=1024, token_bytes=150e3,
                  decode_bytes=3500, ref_params=20.4, ref_vae=0.127),
    denoisers=("transformer",),
    twin=Twin("qwenimage", build_twin, {"patch_size": 2}),
    guidance=true_cfg,
)
