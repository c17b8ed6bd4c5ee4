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
            "vae": dict(channels=(16, 32, 64), latent=4, steps=1500, batch=16, lr=1e-3, share=0.08),
            "text": dict(hidden=64, layers=3, heads=4),
            "unet": dict(channels=(32, 64, 128), heads=8, steps=4000, batch=32, lr=1e-3, share=0.27),
            "max_length": 64, "size": 64,
        },
        "video": {
            "vae": dict(base=8, mult=(1, 2, 4, 4), steps=3000, batch=4, frames=(1, 5), lr=2e-4, share=0.30),
            "dit": dict(heads=4, head_dim=32, ffn=256, layers=4, steps=4000, batch=8, lr=5e-4, share=0.35,
                        bank=1200, frames=(5, 9, 13, 17, 17, 21, 33, 49, 65, 81)),
            "max_length": 64, "size": 64,
        },
    },
    "tiny": {
        "mini": {
            "vae": dict(channels=(8, 16, 16), latent=4, steps=20, batch=8, lr=3e-3, share=0.25),
            "text": dict(hidden=16, layers=1, heads=2),
            "unet": dict(channels=(16, 32), heads=2, steps=20, batch=8, lr=3e-3, share=0.25),
            "max_length": 64, "size": 32,
        },
        "video": {
            "vae": dict(base=4, mult=(1, 1, 1, 1), steps=20, batch=2, frames=(1, 5), lr=3e-3, share=0.25),
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
        """How far through the phase (0..1): by steps, or by time when the limit comes first."""
        p = i / self.steps
        if self.limit:
            p = max(p, (time.monotonic() - self.start) / self.limit)
        return min(1.0, p)

    def lr(self, base: float, i: int, warm: int) -> float:
        """Linear warm-up, then cosine decay to a tenth."""
        return base * min(1.0, (i + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * self.progress(i))))

    def summary(self) -> dict:
        k = max(1, min(50, len(self.losses) // 5))
        return {"steps": len(self.losses), "seconds": round(time.monotonic() - self.start, 1),
                "loss_first": float(np.mean(self.losses[:k])), "loss_last": float(np.mean(self.losses[-k:]))}


def psnr(mse: float) -> float:
    return 10 * math.log10(4.0 / max(mse, 1e-10))  # pixels in [-1, 1]: peak-to-peak 2


# --- mini: Stable Diffusion 1.x ---------------------------------------------------------------


def train_mini(cfg: dict, out: Path, limit_s: float | None) -> dict:
    import torch
    import torch.nn.functional as F
    from diffusers import AutoencoderKL, DDIMScheduler, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from farm.tiny import build_tokenizer

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
    opt = torch.optim.AdamW(vae.parameters(), lr=v["lr"], weight_decay=0.0)
    clock = Clock(limit_s and limit_s * v["share"], v["steps"], "mini vae")
    for i in clock:
        x = pixels[torch.randint(0, len(pixels), (v["batch"],))]
        post = vae.encode(x).latent_dist
        rec = vae.decode(post.sample()).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean() / x[0].numel()
        loss = mse + 1e-4 * kl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        clock.log(i, mse.item(), extra=f"  psnr {psnr(mse.item()):.1f} dB")
    report["vae"] = clock.summary()
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(pixels[i:i + 30]).latent_dist.mode() for i in range(0, len(pixels), 30)])
        rec = torch.cat([vae.decode(latents[i:i + 30]).sample for i in range(0, len(latents), 30)])
    report["vae"]["psnr_all"] = psnr(F.mse_loss(rec, pixels).item())
    print(f"  mini vae: {report['vae']['psnr_all']:.1f} dB over the 270 pictures", flush=True)
    if cfg.get("vae_only"):
        return report
    scale = float(1.0 / latents.std())
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
    ids = tokenizer(prompts + [""], padding="max_length", max_length=cfg["max_length"], truncation=True,
                    return_tensors="pt").input_ids
    empty = ids[-1:]
    ids = ids[:-1]
    train_sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                                num_train_timesteps=1000, clip_sample=False)
    params = list(unet.parameters()) + list(text_encoder.parameters())
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
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        clock.log(i, loss.item())
    report["unet"] = clock.summary()

    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                              set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   image_encoder=None, requires_safety_checker=False)
    save(pipe, out, report)
    return report


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

    from farm.tiny import _t5, build_tokenizer

    seed_everything(SEED)
    rng = random.Random(SEED)
    report = {}

    # 1. the Wan VAE: 8x in space, 4x in time (causal), z_dim 16, on single frames and short
    # clips of the world. lr: 1e-3 stalls (issue 19), 1e-4 learns but slowly.
    v = cfg["vae"]
    torch.manual_seed(SEED)
    vae = AutoencoderKLWan(base_dim=v["base"], z_dim=16, dim_mult=list(v["mult"]), num_res_blocks=1,
                           temperal_downsample=[False, True, True])
    opt = torch.optim.AdamW(vae.parameters(), lr=v["lr"], weight_decay=0.0)
    clock = Clock(limit_s and limit_s * v["share"], v["steps"], "video vae")
    warm = max(1, min(50, v["steps"] // 10))
    for i in clock:
        for g in opt.param_groups:
            g["lr"] = clock.lr(v["lr"], i, warm)
        frames = v["frames"][i % len(v["frames"])]
        batch = v["batch"] * (4 if frames == 1 else 1)
        x = torch.cat([video_tensor(world.clip(*random_clip(rng, frames, size=cfg["size"]))) for _ in range(batch)])
        rec = vae(x).sample
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
    text_encoder = _t5(tokenizer, 32, umt5=True)
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
    ap.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
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
    limit = args.minutes * 60 if args.minutes else None
    start = time.monotonic()
    report = {}
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


if __name__ == "__main__":
    main()
