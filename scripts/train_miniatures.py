"""Train farm's two miniatures from a fixed seed on the world of scripts/world.py (issue 19).

    python scripts/train_miniatures.py                    # both, into presets/miniatures/
    python scripts/train_miniatures.py --tiny --steps 20  # a few steps of tiny configs (the test)

`mini` is a Stable Diffusion 1.x pipeline (UNet, a 4x AutoencoderKL, a CLIP text encoder with
farm's byte-level tokenizer) trained on the world's 270 pictures and prompts; `mini-video` a
Wan 2.1 first/last-frame image-to-video pipeline (Wan DiT, Wan VAE, UMT5, CLIP vision; the
components of farm's `tiny-video` twin) trained on clips of the world, with and without a last
frame. Each is trained in two phases: its VAE (reconstruction), then its denoiser on the VAE's
latents. Every phase runs a fixed number of steps, cut short by its share of `--minutes`
(the steps reached are printed and written into the folder's training.json).

Everything runs on the CPU in float32 with torch's threads set to `--threads`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # for annotations only: the functions that use torch import it themselves
    import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (str(HERE), str(ROOT)):
    if p not in sys.path:
        sys.path.insert(0, p)

import world  # noqa: E402

OUT = ROOT / "presets" / "miniatures"
SEED = 19

# Each phase: its steps, batch, learning rate and share of the time limit.
CONFIGS = {
    "full": {
        "mini": {
            "vae": dict(channels=(16, 32, 64), latent=16, steps=1500, batch=16, lr=1e-3, share=0.15),
            "text": dict(hidden=64, layers=3, heads=4, steps=300, lr=3e-3),
            "unet": dict(channels=(32, 64, 128), heads=8, steps=3500, batch=32, lr=1e-3, share=0.80),
            "max_length": 64, "size": 64,
        },
        "video": {
            "vae": dict(base=16, mult=(1, 2, 2), steps=3600, batch=4, frames=(1, 5, 1, 9), lr=1e-3, share=0.28),
            "dit": dict(heads=4, head_dim=32, ffn=256, layers=4, steps=12000, batch=8, lr=5e-4, share=0.68,
                        bank=2400, frames=(5, 9, 17, 17, 17, 33, 49, 81, 81)),
            "max_length": 64, "size": 64,
        },
    },
    "tiny": {
        "mini": {
            "vae": dict(channels=(8, 16, 16), latent=4, steps=20, batch=8, lr=3e-3, share=0.25),
            "text": dict(hidden=16, layers=1, heads=2, steps=20, lr=3e-3),
            "unet": dict(channels=(16, 32), heads=2, steps=20, batch=8, lr=3e-3, share=0.25),
            "max_length": 64, "size": 32,
        },
        "video": {
            "vae": dict(base=4, mult=(1, 2, 2), steps=20, batch=2, frames=(1, 5), lr=3e-3, share=0.25),
            "dit": dict(heads=2, head_dim=16, ffn=32, layers=1, steps=20, batch=4, lr=3e-3, share=0.25,
                        bank=16, frames=(5, 9)),
            "max_length": 64, "size": 32,
        },
    },
}


def seed_everything(seed: int):
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def to_tensor(images):
    """PIL images -> float tensor (N, 3, H, W) in [-1, 1]."""
    import torch

    a = np.stack([np.asarray(im, dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(a).permute(0, 3, 1, 2).contiguous()


class Clock:
    """Stops a phase at its step count or its share of the time limit, whichever comes first."""

    def __init__(self, limit_s: float | None, steps: int, name: str):
        self.start, self.limit, self.steps, self.name = time.monotonic(), limit_s, steps, name
        self.losses: list[float] = []

    def __iter__(self):
        for i in range(self.steps):
            if self.limit is not None and time.monotonic() - self.start > self.limit:
                break
            yield i

    def log(self, i: int, loss: float, every: int = 20, extra: str = ""):
        self.losses.append(loss)
        if i % every == 0 or i == self.steps - 1:
            recent = np.mean(self.losses[-every:])
            print(f"  {self.name} step {i:5d}  loss {recent:.5f}{extra}  {time.monotonic() - self.start:6.0f}s",
                  flush=True)

    def progress(self, i: int) -> float:
        """How far through the phase (0..1), by steps only: the learning rate must not depend on
        how fast the machine is, or the weights would not come out the same twice."""
        return min(1.0, i / self.steps)

    def lr(self, base: float, i: int, warm: int) -> float:
        """Linear warm-up, then cosine decay to a tenth."""
        return base * min(1.0, (i + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.progress(i))))

    def summary(self) -> dict:
        k = max(1, min(50, len(self.losses) // 5))
        # "complete": every step ran (a phase cut short by the time limit is not reproducible)
        return {"steps": len(self.losses), "complete": len(self.losses) == self.steps,
                "seconds": round(time.monotonic() - self.start, 1),
                "loss_first": float(np.mean(self.losses[:k])), "loss_last": float(np.mean(self.losses[-k:]))}


def psnr(mse: float) -> float:
    return 10 * math.log10(4.0 / max(mse, 1e-10))  # pixels in [-1, 1]: peak-to-peak 2


# --- mini: Stable Diffusion 1.x ---------------------------------------------------------------


def train_mini(cfg: dict, out: Path, limit_s: float | None) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from farm.models.twins import build_tokenizer

    seed_everything(SEED)
    prompts = world.prompts()
    S = cfg["size"]
    pixels = to_tensor([world.picture(p, S, S) for p in prompts])  # (270, 3, S, S)
    report = {}

    # 1. the VAE: 4x (two downsamples), 4 latent channels, trained on the 270 pictures.
    v = cfg["vae"]
    n = len(v["channels"])
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=v["channels"], layers_per_block=1,
        norm_num_groups=min(8, v["channels"][0]), latent_channels=v["latent"], sample_size=S,
    )
    if cfg.get("resume"):  # the VAE and UNet of an earlier run, trained on from where they were
        vae = AutoencoderKL.from_pretrained(Path(cfg["resume"]) / "vae")
    opt = torch.optim.AdamW(vae.parameters(), lr=v["lr"], weight_decay=0.0)
    clock = Clock(limit_s and limit_s * v["share"], 0 if cfg.get("resume") else v["steps"], "mini vae")
    warm = max(1, min(50, v["steps"] // 10))
    for i in clock:
        for g in opt.param_groups:
            g["lr"] = clock.lr(v["lr"], i, warm)
        x = pixels[torch.randint(0, len(pixels), (v["batch"],))]
        # Decoded from the posterior's mean, with an L1 term: sampling the posterior while
        # training blurred edges until triangles read back as balls (fill ratio 0.67, not 0.5).
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.mode()).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + 0.5 * F.l1_loss(rec, x) + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        clock.log(i, mse.item(), extra=f"  psnr {psnr(mse.item()):.1f} dB")
    report["vae"] = clock.summary() if clock.losses else {"resumed": cfg["resume"]}
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 30]).latent_dist.mode() for i in range(0, len(pixels), 30)])
        rec = torch.cat([vae.decode(latents[i:i + 30]).sample for i in range(0, len(latents), 30)])
    report["vae"]["psnr_all"] = psnr(F.mse_loss(rec, pixels).item())
    report["vae"]["read_back"] = read_back(rec, prompts)
    print(f"  mini vae: {report['vae']['psnr_all']:.1f} dB over the 270 pictures; read back: "
          f"{report['vae']['read_back']}", flush=True)
    if cfg.get("vae_only"):
        return report
    scale = vae.config.scaling_factor if cfg.get("resume") else float(1.0 / latents.std())
    vae.register_to_config(scaling_factor=scale)
    latents = latents * scale
    vae.requires_grad_(False)

    # 2. the text encoder and UNet, trained together (prompts dropped 10% of the time for
    # classifier-free guidance, whose unconditional prompt is "").
    tokenizer = build_tokenizer(max_length=cfg["max_length"])
    t = cfg["text"]
    torch.manual_seed(SEED + 1)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=t["hidden"], intermediate_size=2 * t["hidden"],
        num_hidden_layers=t["layers"], num_attention_heads=t["heads"], max_position_embeddings=cfg["max_length"],
        projection_dim=t["hidden"], pad_token_id=0, bos_token_id=1, eos_token_id=3,
    ))
    ids = tokenizer(prompts + [""], padding="max_length", max_length=cfg["max_length"], truncation=True,
                    return_tensors="pt").input_ids
    empty = ids[-1:]
    ids = ids[:-1]
    if cfg.get("resume") and cfg.get("keep_text"):  # an earlier run's taught encoder, as it is
        text_encoder = CLIPTextModel.from_pretrained(Path(cfg["resume"]) / "text_encoder")
        report["text"] = {"resumed": cfg["resume"]}
    else:
        report["text"] = pretrain_text(text_encoder, ids, prompts, t)
    text_encoder.requires_grad_(False)
    u = cfg["unet"]
    n = len(u["channels"])
    unet = UNet2DConditionModel(
        sample_size=S // 2 ** (len(v["channels"]) - 1), in_channels=v["latent"], out_channels=v["latent"],
        block_out_channels=u["channels"],
        layers_per_block=1, norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=t["hidden"], attention_head_dim=u["heads"],
    )
    if cfg.get("resume"):
        unet = UNet2DConditionModel.from_pretrained(Path(cfg["resume"]) / "unet")
    # What the UNet predicts: "sample" (the clean latents) by default. A picture of this world is
    # a function of its prompt alone, so from any noise level the right answer is the prompt's
    # picture: an x0-predicting UNet learns that map directly, where an epsilon-predicting one
    # must also learn to undo the noise (it had not learnt to follow prompts after 2,800 steps).
    prediction = u.get("prediction", "sample")
    train_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000, clip_sample=False, prediction_type=prediction)
    params = list(unet.parameters())
    opt = torch.optim.AdamW(params, lr=u["lr"], weight_decay=0.0)
    clock = Clock(limit_s and limit_s * u["share"], u["steps"], "mini unet")
    warm = max(1, min(100, u["steps"] // 10))
    for i in clock:
        for g in opt.param_groups:
            g["lr"] = clock.lr(u["lr"], i, warm)
        idx = torch.randint(0, len(prompts), (u["batch"],))
        x0 = latents[idx]
        tok = ids[idx].clone()
        drop = torch.rand(u["batch"]) < 0.1
        tok[drop] = empty
        noise = torch.randn_like(x0)
        ts = torch.randint(0, 1000, (u["batch"],))
        xt = train_sched.add_noise(x0, noise, ts)
        cond = text_encoder(tok)[0]
        pred = unet(xt, ts, encoder_hidden_states=cond).sample
        target = x0 if prediction == "sample" else noise
        loss = F.mse_loss(pred, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        clock.log(i, loss.item())
    report["unet"] = clock.summary()

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1, prediction_type=prediction)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    save(pipe, out, report)
    return report


def read_back(images, prompts) -> dict:
    """How often each attribute of the world reads back right from decoded pictures (the
    VAE's ceiling for the UNet), triangles apart: they are the first to blur into balls."""
    arrays = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).numpy()
    right, n = {}, {}
    for a, prompt in zip(arrays, prompts):
        m = world.read(a).matches(prompt)
        m["triangle"] = m["shape"] if world.parse(prompt).shape == "triangle" else None
        for k, v in m.items():
            if v is not None:
                right[k] = right.get(k, 0) + v
                n[k] = n.get(k, 0) + 1
    return {k: round(right[k] / n[k], 3) for k in right}


def pretrain_text(text_encoder, ids, prompts, t: dict) -> dict:
    """Teach the text encoder the world before the UNet reads it: a linear head on every
    position from the end-of-text token on (which, CLIP's attention being causal, see the
    whole prompt) must tell the background, colour, shape and place. Trained jointly with the
    UNet from scratch instead, the encoder had not taught the UNet to follow prompts after
    1,250 steps (10 min): it drew pictures of the world, of any prompt."""
    import torch
    import torch.nn.functional as F

    tables = [list(world.BACKGROUNDS), list(world.COLOURS), list(world.SHAPES), list(world.PLACES)]
    scenes = [world.parse(p) for p in prompts]
    labels = torch.tensor([[tables[0].index(s.background), tables[1].index(s.colour), tables[2].index(s.shape),
                            tables[3].index(s.place)] for s in scenes])
    torch.manual_seed(SEED + 4)
    head = torch.nn.Linear(text_encoder.config.hidden_size, sum(map(len, tables)))
    eos = (ids == 3).float().argmax(1)
    after = torch.arange(ids.shape[1])[None, :] >= eos[:, None]  # (N, L)
    params = list(text_encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=t.get("lr", 3e-3), weight_decay=0.0)
    clock = Clock(None, t.get("steps", 300), "mini text")
    for i in clock:
        hidden = text_encoder(ids)[0]  # (N, L, h)
        logits = head(hidden[after])  # (M, classes)
        lab = labels[:, None, :].expand(-1, ids.shape[1], -1)[after]  # (M, 4)
        loss, start, right = 0.0, 0, True
        for k, table in enumerate(tables):
            part = logits[:, start:start + len(table)]
            loss = loss + F.cross_entropy(part, lab[:, k])
            right = right & (part.argmax(1) == lab[:, k])
            start += len(table)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clock.log(i, loss.item(), extra=f"  right {right.float().mean().item():.0%}")
    return clock.summary() | {"right": float(right.float().mean())}


# --- mini-video: Wan 2.1 first/last frame -----------------------------------------------------


def random_clip(rng: random.Random, frames: int, with_last: bool | None = None, size: int = 64):
    """A random clip of the world: (first prompt, last prompt or None, frames)."""
    prompts = world.prompts()
    first = rng.choice(prompts)
    if with_last is None:
        with_last = rng.random() < 0.5
    if not with_last:
        return first, None, frames, world.FPS, size, size
    shape = world.parse(first).shape
    last = rng.choice([p for p in prompts if world.parse(p).shape == shape])
    if rng.random() < 0.5:  # often the same colour and background: a pure move, as storyboards have
        a, b = world.parse(first), world.parse(last)
        last = world.Scene(a.colour, a.shape, b.place, a.background).prompt
    return first, last, frames, world.FPS, size, size


def video_tensor(frames) -> torch.Tensor:
    return to_tensor(frames).permute(1, 0, 2, 3).unsqueeze(0)  # (1, 3, F, H, W)


def train_video(cfg: dict, out: Path, limit_s: float | None) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import (
        AutoencoderKLWan,
        FlowMatchEulerDiscreteScheduler,
        WanImageToVideoPipeline,
        WanTransformer3DModel,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    from farm.models.twins import build_tokenizer, t5

    seed_everything(SEED)
    rng = random.Random(SEED)
    report = {}

    # 1. the Wan VAE: 8x in space, 4x in time (causal, 4k+1 frames), z_dim 16, on single frames
    # and short clips of the world. Wan 2.2's form of it (`is_residual`, pixels patchified 2x2
    # first, two downsamples): its parameter-free shortcuts (averaging down, duplicating up) start
    # it near a plain resize, and it learns at lr 1e-3 (21.6 dB after 100 s on one core), where
    # Wan 2.1's form stalled at 13-14 dB at any rate above 1e-4 and reached 17.5 dB in 12 minutes
    # (issue 19). The pipeline reads its factors (scale_factor_spatial/temporal) from its config.
    v = cfg["vae"]
    torch.manual_seed(SEED)
    mult = list(v["mult"])
    vae = AutoencoderKLWan(base_dim=v["base"], z_dim=16, dim_mult=mult, num_res_blocks=1,
                           temperal_downsample=[True] * (len(mult) - 1), is_residual=True, patch_size=2,
                           in_channels=12, out_channels=12, scale_factor_spatial=2 * 2 ** (len(mult) - 1),
                           scale_factor_temporal=2 ** (len(mult) - 1))
    opt = torch.optim.AdamW(vae.parameters(), lr=v["lr"], weight_decay=0.0)
    clock = Clock(limit_s and limit_s * v["share"], v["steps"], "video vae")
    warm = max(1, min(50, v["steps"] // 10))
    for i in clock:
        for g in opt.param_groups:
            g["lr"] = clock.lr(v["lr"], i, warm)
        frames = v["frames"][i % len(v["frames"])]
        batch = v["batch"] * (4 if frames == 1 else 1)
        x = torch.cat([video_tensor(world.clip(*random_clip(rng, frames, size=cfg["size"]))) for _ in range(batch)])
        rec = raw_decode(vae, vae.encode(x).latent_dist.sample())
        loss = F.mse_loss(rec, x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        clock.log(i, loss.item(), extra=f"  psnr {psnr(loss.item()):.1f} dB")
    report["vae"] = clock.summary()
    vae.eval()
    vae.requires_grad_(False)
    if cfg.get("vae_only"):
        return report

    # 2. the frozen conditioners (random, as the twin's: the DiT learns to read them), and the
    # bank of training clips encoded once: target latents and the pipeline's own condition
    # (mask + the latents of [first, zeros..., last]) and CLIP image tokens.
    tokenizer = build_tokenizer(max_length=cfg["max_length"])
    text_encoder = t5(tokenizer, 32, umt5=True)
    torch.manual_seed(SEED + 2)
    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=16, projection_dim=16, num_hidden_layers=2, num_attention_heads=2, image_size=32,
        intermediate_size=32, patch_size=8,
    ))
    image_processor = CLIPImageProcessor(crop_size=32, size=32)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    d = cfg["dit"]
    torch.manual_seed(SEED + 3)
    transformer = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=d["heads"], attention_head_dim=d["head_dim"], in_channels=36,
        out_channels=16, text_dim=32, freq_dim=64, ffn_dim=d["ffn"], num_layers=d["layers"], cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", image_dim=16, pos_embed_seq_len=2 * 17, rope_max_seq_len=64,
    )
    pipe = WanImageToVideoPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae, scheduler=scheduler,
                                   image_processor=image_processor, image_encoder=image_encoder,
                                   transformer=transformer)
    t0 = time.monotonic()
    bank = make_bank(pipe, rng, d["bank"], d["frames"], limit_s and limit_s * d["share"] * 0.4, cfg["size"])
    report["bank"] = {"clips": len(bank), "seconds": round(time.monotonic() - t0, 1)}
    print(f"  bank: {len(bank)} clips in {report['bank']['seconds']}s", flush=True)

    # 3. the DiT, flow matching as the pipeline samples it (sigma shifted by 3, velocity target).
    shift = scheduler.config.shift
    opt = torch.optim.AdamW(transformer.parameters(), lr=d["lr"], weight_decay=0.0)
    left = None if limit_s is None else max(10.0, limit_s * d["share"] - (time.monotonic() - t0))
    clock = Clock(left, d["steps"], "video dit")
    warm = max(1, min(100, d["steps"] // 10))
    by_len = {}
    for item in bank:
        by_len.setdefault(item["latents"].shape[2], []).append(item)
    lengths = sorted(by_len)
    for i in clock:
        for g in opt.param_groups:
            g["lr"] = clock.lr(d["lr"], i, warm)
        group = by_len[lengths[i % len(lengths)]]
        items = [group[j] for j in torch.randint(0, len(group), (d["batch"],)).tolist()]
        x0 = torch.cat([it["latents"] for it in items])
        cond = torch.cat([it["condition"] for it in items])
        img = torch.cat([it["image_embeds"] for it in items])
        text = torch.cat([it["prompt_embeds"] for it in items])
        u = torch.rand(len(items))
        sigma = (shift * u / (1 + (shift - 1) * u)).view(-1, 1, 1, 1, 1)
        noise = torch.randn_like(x0)
        xt = (1 - sigma) * x0 + sigma * noise
        pred = transformer(hidden_states=torch.cat([xt, cond], dim=1), timestep=sigma.flatten() * 1000,
                           encoder_hidden_states=text, encoder_hidden_states_image=img, return_dict=False)[0]
        loss = F.mse_loss(pred, noise - x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(transformer.parameters(), 1.0)
        opt.step()
        clock.log(i, loss.item())
    report["dit"] = clock.summary()
    save(pipe, out, report)
    return report


def raw_decode(vae, z):
    """AutoencoderKLWan's decode without its final clamp to [-1, 1]: the clamp has no gradient
    outside that range, so an output pushed past it by one large step stops learning there
    (the VAE stalled at 13-14 dB at lr 3e-4 and above, issue 19). The same frame-by-frame loop
    with the feature cache as diffusers' `_decode`."""
    import torch

    vae.clear_cache()
    x = vae.post_quant_conv(z)
    out = []
    for i in range(z.shape[2]):
        vae._conv_idx = [0]
        out.append(vae.decoder(x[:, :, i:i + 1], feat_cache=vae._feat_map, feat_idx=vae._conv_idx,
                               first_chunk=i == 0))
    vae.clear_cache()
    out = torch.cat(out, 2)
    if vae.config.patch_size:
        from diffusers.models.autoencoders.autoencoder_kl_wan import unpatchify

        out = unpatchify(out, patch_size=vae.config.patch_size)
    return out


def make_bank(pipe, rng: random.Random, count: int, lengths, limit_s: float | None, size: int) -> list[dict]:
    """`count` random clips, encoded as the pipeline encodes them, grouped by length so that
    each group is encoded in one batch."""
    import torch

    vae = pipe.vae
    z = vae.config.z_dim
    # The VAE's latent statistics, from single frames of the world: the pipeline normalizes
    # latents by them (latents_mean / latents_std in the VAE's config).
    with torch.no_grad():
        frames = to_tensor([world.picture(p, size, size) for p in world.prompts()]).unsqueeze(2)
        mu = torch.cat([vae.encode(frames[i:i + 30]).latent_dist.mode() for i in range(0, len(frames), 30)])
    mean = mu.mean(dim=(0, 2, 3, 4))
    std = mu.std(dim=(0, 2, 3, 4)).clamp_min(1e-3)
    vae.register_to_config(latents_mean=mean.tolist(), latents_std=std.tolist())
    mean, inv = mean.view(1, z, 1, 1, 1), (1.0 / std).view(1, z, 1, 1, 1)
    st = pipe.vae_scale_factor_temporal
    specs = [random_clip(rng, lengths[i % len(lengths)], size=size) for i in range(count)]
    start = time.monotonic()
    bank = []
    # chunks of 8 clips of one length, taken round-robin over the lengths (a time limit then
    # shortens every length's share alike)
    groups = [[s for s in specs if s[2] == n] for n in sorted(set(lengths))]
    chunks = [g[k:k + 8] for k in range(0, max(map(len, groups)), 8) for g in groups if g[k:k + 8]]
    for chunk in chunks:
        n = chunk[0][2]
        if limit_s is not None and time.monotonic() - start > limit_s:
            break
        with torch.no_grad():
            clips = [world.clip(*s) for s in chunk]
            x = torch.cat([video_tensor(c) for c in clips])
            lat = (vae.encode(x).latent_dist.mode() - mean) * inv
            conds = []
            for (_first, last, *_), c in zip(chunk, clips):
                f = to_tensor([c[0]]).unsqueeze(2)
                zeros = torch.zeros(1, 3, n - (2 if last else 1), size, size)
                conds.append(torch.cat([f, zeros] + ([to_tensor([c[-1]]).unsqueeze(2)] if last else []), dim=2))
            cl = (vae.encode(torch.cat(conds)).latent_dist.mode() - mean) * inv
            lh, lw = lat.shape[3], lat.shape[4]
            for j, ((first, last, *_), c) in enumerate(zip(chunk, clips)):
                mask = torch.ones(1, 1, n, lh, lw)
                mask[:, :, 1:(n - 1 if last else n)] = 0
                mask = torch.cat([mask[:, :, :1].repeat_interleave(st, dim=2), mask[:, :, 1:]], dim=2)
                mask = mask.view(1, -1, st, lh, lw).transpose(1, 2)
                # farm gives a clip without a last frame its first frame's CLIP tokens twice
                img = pipe.encode_image([c[0], c[-1] if last else c[0]], "cpu")
                prompt = "" if rng.random() < 0.3 else last or first  # farm's image keyframes have none
                text, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False,
                                             max_sequence_length=64, device="cpu")
                bank.append({"latents": lat[j:j + 1], "condition": torch.cat([mask, cl[j:j + 1]], dim=1),
                             "image_embeds": img, "prompt_embeds": text})
    return bank


# --- saving -----------------------------------------------------------------------------------


def save(pipe, out: Path, report: dict):
    """save_pretrained into `out` (safetensors only), with what the training reached."""
    import shutil

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    pipe.save_pretrained(tmp, safe_serialization=True)
    (tmp / "training.json").write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    print(f"  saved {out} ({size / 1e6:.1f} MB)", flush=True)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=OUT, help="folder that receives mini/ and mini-video/")
    ap.add_argument("--tiny", action="store_true", help="tiny configs (the test)")
    ap.add_argument("--steps", type=int, help="steps of every phase (default: each config's)")
    ap.add_argument("--minutes", type=float, default=None, help="time limit for both models")
    ap.add_argument("--only", choices=("mini", "mini-video"))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override one setting, e.g. video.vae.lr=1e-4 (tuning runs)")
    ap.add_argument("--stop-after-vae", action="store_true", help="train the VAEs only (tuning runs)")
    ap.add_argument("--resume-mini", type=Path, help="train mini's text encoder and UNet on from this folder")
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1),
                    help="torch threads (split between the two models when they train side by side)")
    ap.add_argument("--one-process", action="store_true", help="train the two models one after the other")
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    cfg = json.loads(json.dumps(CONFIGS["tiny" if args.tiny else "full"]))
    if args.steps:
        for model in cfg.values():
            for phase in model.values():
                if isinstance(phase, dict) and "steps" in phase:
                    phase["steps"] = args.steps
    for item in args.set:
        key, _, value = item.partition("=")
        *path, last = key.split(".")
        node = cfg
        for k in path:
            node = node[k]
        node[last] = json.loads(value)
    for model in cfg.values():
        model["vae_only"] = args.stop_after_vae
    if args.resume_mini:
        cfg["mini"]["resume"] = str(args.resume_mini)
    limit = args.minutes * 60 if args.minutes else None
    start = time.monotonic()
    report = {}
    if args.only is None and not args.one_process:
        # The two models side by side, one process and one core each: small models keep two
        # threads of one process waiting on each other, so this is faster than one after the other.
        return side_by_side(argv if argv is not None else sys.argv[1:], args, start)
    if args.only in (None, "mini"):
        print("mini (StableDiffusionPipeline)", flush=True)
        report["mini"] = train_mini(cfg["mini"], args.out / "mini", limit)
    if args.only in (None, "mini-video"):
        print("mini-video (WanImageToVideoPipeline)", flush=True)
        left = None if limit is None else limit - (time.monotonic() - start)
        if left is not None and args.only is None:  # the video phases' shares, scaled to what is left
            left /= sum(p["share"] for p in cfg["video"].values() if isinstance(p, dict) and "share" in p)
        report["mini-video"] = train_video(cfg["video"], args.out / "mini-video", left)
    report["seconds"] = round(time.monotonic() - start, 1)
    print(json.dumps(report), flush=True)
    return report


def side_by_side(argv: list[str], args, start: float) -> dict:
    """Run `--only mini` and `--only mini-video` as two processes at once, each with half the
    threads; their output is prefixed by the model's name. Exits non-zero if either fails."""
    import subprocess
    import threading

    threads = max(1, args.threads // 2)
    procs = {name: subprocess.Popen([sys.executable, __file__, *argv, "--only", name, "--threads", str(threads)],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
             for name in ("mini", "mini-video")}
    reports = {}

    def pump(name, proc):
        for line in proc.stdout:
            if line.startswith("{"):
                reports[name] = json.loads(line)[name]
            print(f"[{name}] {line}", end="", flush=True)

    pumps = [threading.Thread(target=pump, args=item) for item in procs.items()]
    for t in pumps:
        t.start()
    for t in pumps:
        t.join()
    failed = [name for name, proc in procs.items() if proc.wait() != 0]
    if failed:
        raise SystemExit(f"training failed: {', '.join(failed)}")
    report = {**reports, "seconds": round(time.monotonic() - start, 1)}
    print(json.dumps(report), flush=True)
    return report


if __name__ == "__main__":
    main()
