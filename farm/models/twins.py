"""What the tiny twins share: the byte-level tokenizer and the small text encoders and VAE
that several families' twins are built from.

A twin is a tiny random-weight pipeline built in code: a real diffusers pipeline of a real
family, with every component (tokenizer included) constructed locally from a fixed seed, so no
download is ever needed. `farm.models` saves the result with `save_pretrained` and always loads
it back with `from_pretrained`, so the loading path that a real model takes is the one that
runs. They draw noise, not pictures.

Each family module (farm/models/families/) holds its twin's builder (`build_twin`), the shapes
it is built with and its recipe version, which is part of every task key that uses the model:
bump it when a builder changes, so old cached outputs are not mistaken for new ones. Nothing
here imports torch or a model library until a builder calls it.
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


# --- the components several twins share -----------------------------------------------------
# Each twin (its builder in its family's module) keeps its family's pipeline class, component
# classes and the shape rules that decide which sizes and frame counts work (VAE compression,
# patch sizes, packed latents), with every width cut to 8-32 channels and 1-2 layers: a build
# plus a 32-64 px, 2-step call takes a few seconds on a 2-core CPU.


def clip_text(tokenizer, hidden: int, projection: bool = False):
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=tokenizer.model_max_length, projection_dim=hidden,
        pad_token_id=0, bos_token_id=1, eos_token_id=3,  # not 2: CLIP treats eos id 2 as the legacy argmax pooling
    )
    return (CLIPTextModelWithProjection if projection else CLIPTextModel)(config)


def t5(tokenizer, d_model: int, umt5: bool = False):
    import torch
    from transformers import T5Config, T5EncoderModel, UMT5Config, UMT5EncoderModel

    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    torch.manual_seed(0)
    return model_cls(config_cls(
        vocab_size=len(tokenizer), d_model=d_model, d_kv=8, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=3, decoder_start_token_id=0,
    ))


def vae_8x(latent_channels: int, sample_size: int = 64, **kw):
    """An AutoencoderKL with three downsamples (8x), like SD, SDXL, SD3 and Flux."""
    import torch
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8, 8, 8, 8), layers_per_block=1,
        norm_num_groups=4, latent_channels=latent_channels, sample_size=sample_size, **kw,
    )


