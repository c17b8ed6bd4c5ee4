"""FLUX.2: text-to-image, a double/single-stream transformer over 2x2-patchified latents of an
8x VAE (sides in multiples of 16), its text from Mistral Small 3.1's hidden states; guidance is
an input (guidance-distilled), and the call takes no negative prompt.

Verified in diffusers 0.42.1, pipelines/flux2/pipeline_flux2.py: components scheduler / vae
(AutoencoderKLFlux2) / text_encoder (Mistral3ForConditionalGeneration) / tokenizer
(AutoProcessor: the real model's PixtralProcessor) / transformer (Flux2Transformer2DModel)
(274-290); vae_scale_factor = 2 ** (len(vae block_out_channels) - 1) (8) and the image
processor works on multiples of 16 (291-294); other sizes are only warned about and resized
(697-705), so farm refuses them at validation instead. `__call__` (748-769) takes
`guidance_scale` (default 4.0, embedded: 950-952) and no `negative_prompt`, so this family's
`guidance` passes the guidance alone and a spec's negative prompt is refused (`negative`).
The prompt goes through `tokenizer.apply_chat_template` as [system, user] messages whose
content is a list of {"type": "text"} parts (65-97, 323-332; padded to max_sequence_length),
and the hidden states of `text_encoder_out_layers` (default (10, 20, 30)) are stacked:
the transformer's joint_attention_dim is len(layers) x the text hidden size (347-351).
"""

from ..twins import build_tokenizer
from .family import Family, Memory, Shape, Twin, embedded_guidance

PIPELINE = "Flux2Pipeline"

# The twin's chat template: each message's role, then its content parts' text, as the real
# processor's template reads the same list of {"type": "text", "text": ...} parts.
CHAT_TEMPLATE = ("{% for message in messages %}[{{ message['role'] }}]"
                 "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
                 "{% endfor %}{% endfor %}")


def shape(config: dict) -> Shape:
    return Shape(PIPELINE, multiple=8 * 2 * config.get("patch_size", 1))  # 8x VAE, latents patchified 2x2


def build_twin(shapes: dict):
    """FLUX.2: double- and single-stream transformer over 2x2-patchified latents (16 channels in,
    from a 4-channel 8x VAE with its batch-norm statistics), a Mistral 3 text encoder of one
    layer under the byte-level tokenizer with a chat template. Its preset passes
    `text_encoder_out_layers = [1]` (the real default, (10, 20, 30), needs 30 layers); the
    transformer's joint_attention_dim is that one layer's hidden size, 16."""
    import torch
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2Pipeline, Flux2Transformer2DModel
    from transformers import Mistral3Config, Mistral3ForConditionalGeneration

    # 256: the system message (168 bytes) and the roles come before the prompt, one token a byte
    tokenizer = build_tokenizer(max_length=256)
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    text_encoder = Mistral3ForConditionalGeneration(Mistral3Config(
        text_config={
            "model_type": "mistral", "vocab_size": len(tokenizer), "hidden_size": 16, "intermediate_size": 37,
            "max_position_embeddings": 512, "num_attention_heads": 4, "num_hidden_layers": 1,
            "num_key_value_heads": 2, "sliding_window": None, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 3,
        },
        vision_config={"model_type": "pixtral", "hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 4,
                       "intermediate_size": 37, "image_size": 30, "patch_size": 6},
        image_token_index=1, image_seq_length=4, vision_feature_layer=-1,
    ))
    torch.manual_seed(0)
    transformer = Flux2Transformer2DModel(
        **shapes, in_channels=16, num_layers=1, num_single_layers=1, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=16, axes_dims_rope=(4, 4, 4, 4),  # sums to attention_head_dim
    )
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        block_out_channels=(8, 8, 8, 8), layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=64,
        use_quant_conv=False, use_post_quant_conv=False,
    )
    return Flux2Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0), vae=vae, text_encoder=text_encoder,
        tokenizer=tokenizer, transformer=transformer,
    )


FAMILY = Family(
    name="FLUX.2", pipeline=PIPELINE, role="keyframes", conditioning="prompt only", multiple_of=16, shape=shape,
    memory=Memory(spatial=8, temporal=1, patch=(1, 2, 2), decode_frames=1, tile=1024, token_bytes=150e3,
                  decode_bytes=3500, ref_params=32.0, ref_vae=0.084),
    denoisers=("transformer",),
    twin=Twin("flux2", build_twin, {"patch_size": 1}),
    guidance=embedded_guidance, negative=False,
)
