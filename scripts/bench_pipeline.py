"""Time a real-size denoiser, random weights at the real config (no download), four ways:

  1. stock    diffusers eager
  2. compile  stock + torch.compile (Inductor), what a skilled user already has
  3. farm     farm kernels + compile + attention backend (`farm.accelerate`, farm/acceleration)
  4. cache    farm + First Block Cache
  5. taylorseer  farm + TaylorSeer (attention predicted between full steps)

For each: the median time of one denoising step (a conditional and an unconditional call, as
the pipelines make them), and a whole denoise of --steps steps with a flow-matching Euler
scheduler from the same noise, whose final latents are compared with stock's (PSNR over the
latents' range). Needs a CUDA GPU; without one it says so and ends with its JSON line, unless
--tiny runs the tiny twin on the CPU (a check that the script works, not a benchmark).

    python scripts/bench_pipeline.py [--model wan-1.3b|wan-14b] [--steps 50] [--frames 81]
    python scripts/bench_pipeline.py --tiny --steps 3      # CPU smoke run

Last line: one JSON object {"gpu", "device", "model", "tokens", "modes": {mode: {"step_s",
"denoise_s", "psnr_db", "speedup_vs_eager", "speedup_vs_compile", ...}}}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CONFIGS = {  # diffusers' transformer/config.json of each Wan 2.1 text-to-video model
    "wan-1.3b": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                     out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                     cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
    "wan-14b": dict(patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=16,
                    out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40,
                    cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6),
    "tiny": dict(patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
                 text_dim=32, freq_dim=64, ffn_dim=64, num_layers=2, cross_attn_norm=True,
                 qk_norm="rms_norm_across_heads", rope_max_seq_len=64),
}
MODES = ("stock", "compile", "farm", "cache", "taylorseer")
CACHES = ("cache", "taylorseer")


def psnr(x, ref) -> float:
    mse = (x.float() - ref.float()).pow(2).mean().item()
    peak = (ref.max() - ref.min()).item()
    return 999.0 if mse == 0 else 10 * math.log10(peak * peak / mse)  # 999: identical (JSON has no inf)


def build(name, dtype, device):
    import torch
    from diffusers import WanTransformer3DModel

    torch.manual_seed(0)
    with torch.device(device):
        model = WanTransformer3DModel(**CONFIGS[name])
    return model.to(dtype).eval()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="wan-1.3b", choices=[k for k in CONFIGS if k != "tiny"])
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--frames", type=int, default=81, help="video frames (4k+1)")
    ap.add_argument("--size", default="832x480", help="width x height")
    ap.add_argument("--modes", default=",".join(MODES))
    ap.add_argument("--threshold", type=float, default=0.05, help="First Block Cache threshold")
    ap.add_argument("--tiny", action="store_true", help="the tiny twin on whatever device there is (a smoke run)")
    args = ap.parse_args()

    import torch

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    gpu = torch.cuda.is_available()
    if not gpu and not args.tiny:
        print("bench_pipeline: no CUDA GPU on this machine: nothing timed. A real-size Wan step needs a GPU "
              "(use --tiny for a CPU smoke run of this script).", file=sys.stderr)
        print(json.dumps({"gpu": False, "device": None, "date": stamp, "model": args.model, "modes": {},
                          "reason": "no CUDA device"}))
        return 0

    from diffusers import FlowMatchEulerDiscreteScheduler

    from farm.acceleration import accelerate, reset

    device = "cuda" if gpu else "cpu"
    dtype = torch.bfloat16 if gpu else torch.float32
    name = "tiny" if args.tiny else args.model
    width, height = (32, 32) if args.tiny else map(int, args.size.split("x"))
    frames = 5 if args.tiny else args.frames
    cfg = CONFIGS[name]
    latent = (1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    tokens = latent[2] * latent[3] // 2 * latent[4] // 2
    g = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(latent, generator=g).to(device, dtype)
    text = torch.randn((1, 512, cfg["text_dim"]), generator=g).to(device, dtype)
    negative = torch.randn((1, 512, cfg["text_dim"]), generator=g).to(device, dtype)
    model = build(name, dtype, device)

    class Pipe:  # what farm.accelerate looks for
        transformer = model

    def sync():
        if gpu:
            torch.cuda.synchronize()

    def call(x, t, ctx, which):
        with model.cache_context(which):
            return model(x, t, ctx, return_dict=False)[0]

    def step(x, t):
        cond = call(x, t, text, "cond")
        uncond = call(x, t, negative, "uncond")
        return uncond + 5.0 * (cond - uncond)

    def denoise():
        sched = FlowMatchEulerDiscreteScheduler(shift=3.0)
        sched.set_timesteps(args.steps, device=device)
        x = noise.clone()
        for t in sched.timesteps:
            x = sched.step(step(x, t.reshape(1)), t, x, return_dict=False)[0]
        return x

    def timed(fn, repeat):
        times = []
        for _ in range(repeat):
            sync()
            t0 = time.perf_counter()
            out = fn()
            sync()
            times.append(time.perf_counter() - t0)
        return out, statistics.median(times)

    results, reference = {}, None
    print(f"{torch.cuda.get_device_name() if gpu else 'CPU'}: {name}, {tokens} tokens, {args.steps} steps, "
          f"{dtype}", file=sys.stderr)
    for mode in args.modes.split(","):
        torch._dynamo.reset()
        report = None
        if mode == "compile":
            model.compile(fullgraph=False, dynamic=False)
        elif mode == "farm" or mode in CACHES:
            report = accelerate(Pipe, kernels=True, compile=True, attention=True,
                                cache=mode if mode in CACHES else False, cache_threshold=args.threshold)
        t_mid = torch.full((1,), 500.0, device=device)
        with torch.no_grad():
            t0 = time.perf_counter()
            step(noise, t_mid)  # compiles (and warms up)
            sync()
            warm = time.perf_counter() - t0
            if mode in CACHES:
                step_s = None  # repeating one step would hit the cache every time: only the denoise counts
                # A first denoise compiles the graphs of the skip branch; the timed one starts
                # afresh (no residuals from before), like every render.
                model._reset_stateful_cache()
                denoise()
                model._reset_stateful_cache()
                report.cache.update(decisions=0, skipped=0)
            else:
                _, step_s = timed(lambda t=t_mid: step(noise, t), 3)
            latents, denoise_s = timed(denoise, 1)
        if mode == "stock":
            reference = latents
        row = {"step_s": None if step_s is None else round(step_s, 4), "denoise_s": round(denoise_s, 3),
               "first_call_s": round(warm, 2),
               "psnr_db": None if reference is None or mode == "stock"
               else round(min(psnr(latents, reference), 999.0), 2)}
        if report is not None:
            row["report"] = report.to_json()
        results[mode] = row
        print(f"  {mode:<10} step {step_s or float('nan'):8.4f}s  denoise {denoise_s:8.2f}s  first call {warm:6.1f}s  "
              f"PSNR {row['psnr_db']} dB", file=sys.stderr)
        model._compiled_call_impl = None
        if report is not None:
            reset(Pipe)
    for row in results.values():
        for base in ("stock", "compile"):
            if base in results:
                row[f"speedup_vs_{'eager' if base == 'stock' else 'compile'}"] = {
                    "step": round(results[base]["step_s"] / row["step_s"], 3) if row["step_s"] else None,
                    "denoise": round(results[base]["denoise_s"] / row["denoise_s"], 3)}
    print(json.dumps({"gpu": gpu, "device": torch.cuda.get_device_name() if gpu else "cpu", "date": stamp,
                      "model": name, "config": {k: v for k, v in cfg.items() if k != "patch_size"},
                      "latent": list(latent), "tokens": tokens, "steps": args.steps, "dtype": str(dtype),
                      "command": " ".join(sys.argv), "modes": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
