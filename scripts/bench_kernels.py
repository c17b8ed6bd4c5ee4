"""Time each fused kernel against its PyTorch reference, eager and under torch.compile, at the
shapes of real models: SDXL 1024², FLUX.1 1024², Wan 2.1 1.3B and 14B at 480p (81 frames).

Every kernel file in kernels/ holds the reference it is timed against (the same one the tests
compare with). Times are medians of triton.testing.do_bench (CUDA events, warm L2 flushed).
Needs a CUDA GPU; without one it says so, and still ends with its JSON line.

    python scripts/bench_kernels.py [--dtype bfloat16] [--only adaln,glu]

Last line: one JSON object {"gpu": ..., "device": ..., "dtype": ..., "results": [{"kernel", "shape",
"model", "eager_ms", "compiled_ms", "farm_ms", "vs_eager", "vs_compiled"}, ...]}.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

# Real configs (diffusers' config.json of each model):
#   SDXL UNet: block_out_channels 320/640/1280, 32 groups; 1024² -> 128² latent; GEGLU inner 4 x dim,
#     attention at the 64² (640) and 32² (1280) levels; batch 2 (CFG).
#   FLUX.1: 3072 wide, 24 heads x 128, RMSNorm per head, MLP 4 x; 1024² -> 4096 image + 512 text tokens.
#   Wan 2.1 1.3B: 1536 wide, 12 heads x 128, ffn 8960; 14B: 5120 wide, 40 heads, ffn 13824;
#     480p (832 x 480, 81 frames) -> latent 21 x 60 x 104, patch (1, 2, 2) -> 32760 tokens.
WAN_TOKENS = 21 * 30 * 52
FLUX_TOKENS = 4096 + 512


def cases(dtype):
    """(kernel, model, shape description, make inputs() -> (farm, reference args))."""
    import torch

    from kernels import adaln, gated_residual, gelu, glu, group_norm_silu, rmsnorm_rope

    dev = "cuda"

    def t(*shape, dt=dtype):
        return torch.randn(*shape, device=dev, dtype=dt)

    out = []
    for label, (n, c, hw) in {"SDXL 128² x 320": (2, 320, 128), "SDXL 64² x 640": (2, 640, 64),
                              "SDXL 32² x 1280": (2, 1280, 32)}.items():
        out.append((group_norm_silu, "SDXL", label,
                    lambda n=n, c=c, hw=hw: (t(n, c, hw, hw), t(c), t(c), 32, 1e-5, True)))
    for label, (b, l, d, mod_dt) in {"FLUX 4608 x 3072": (1, FLUX_TOKENS, 3072, dtype),
                                     "Wan 1.3B 32760 x 1536": (1, WAN_TOKENS, 1536, torch.float32),
                                     "Wan 14B 32760 x 5120": (1, WAN_TOKENS, 5120, torch.float32)}.items():
        model = label.split()[0]
        out.append((adaln, model, label, lambda b=b, l=l, d=d, m=mod_dt: (
            t(b, l, d), None, None, t(b, 1, d, dt=m), t(b, 1, d, dt=m), 1e-6, False)))
        out.append((gated_residual, model, label, lambda b=b, l=l, d=d, m=mod_dt: (
            t(b, l, d, dt=m), t(b, l, d), t(b, 1, d, dt=m))))
    for label, (l, h, per_head) in {"FLUX 4608 x 24 x 128": (FLUX_TOKENS, 24, True),
                                    "Wan 1.3B 32760 x 12 x 128": (WAN_TOKENS, 12, False),
                                    "Wan 14B 32760 x 40 x 128": (WAN_TOKENS, 40, False)}.items():
        out.append((rmsnorm_rope, label.split()[0], label, lambda l=l, h=h, p=per_head: (
            t(1, l, h * 128), t(128 if p else h * 128), t(l, 64, dt=torch.float32), t(l, 64, dt=torch.float32),
            h, 1e-6, p)))
    for label, (l, f) in {"FLUX 4608 x 12288": (FLUX_TOKENS, 12288), "Wan 1.3B 32760 x 8960": (WAN_TOKENS, 8960),
                          "Wan 14B 32760 x 13824": (WAN_TOKENS, 13824)}.items():
        out.append((gelu, label.split()[0], label, lambda l=l, f=f: (t(1, l, f), "tanh")))
    for label, (b, l, f) in {"SDXL 4096 x 2 x 2560": (2, 4096, 2560), "SDXL 1024 x 2 x 5120": (2, 1024, 5120)}.items():
        out.append((glu, "SDXL", label, lambda b=b, l=l, f=f: (t(b, l, 2 * f), "gelu")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--only", help="comma-separated kernel names")
    args = ap.parse_args()
    import torch

    stamp = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    if not torch.cuda.is_available():
        print("bench_kernels: no CUDA GPU on this machine: nothing timed. Kernel speed is only meaningful on a GPU "
              "(the CPU runs Triton's interpreter, thousands of times slower). Run this on a GPU box.",
              file=sys.stderr)
        print(json.dumps({"gpu": False, "device": None, "date": stamp, "results": [],
                          "reason": "no CUDA device"}))
        return 0
    try:
        import triton.testing
    except ImportError:
        print("bench_kernels: triton is not installed (pip install 'farm[kernels]').", file=sys.stderr)
        print(json.dumps({"gpu": True, "device": torch.cuda.get_device_name(), "date": stamp, "results": [],
                          "reason": "triton not installed"}))
        return 0
    dtype = getattr(torch, args.dtype)
    only = set(args.only.split(",")) if args.only else None
    results = []
    print(f"{torch.cuda.get_device_name()}, {args.dtype}, torch {torch.__version__}, triton {triton.__version__}",
          file=sys.stderr)
    print(f"{'kernel':<16} {'shape':<28} {'eager ms':>9} {'compile ms':>10} {'farm ms':>8} {'vs eager':>8} "
          f"{'vs compile':>10}", file=sys.stderr)
    for module, model, label, make in cases(dtype):
        if only and module.NAME not in only:
            continue
        inputs = make()
        compiled = torch.compile(module.reference, fullgraph=True, dynamic=False)
        with torch.no_grad():
            ms = {
                "eager": triton.testing.do_bench(lambda m=module, x=inputs: m.reference(*x)),
                "compiled": triton.testing.do_bench(lambda f=compiled, x=inputs: f(*x)),
                "farm": triton.testing.do_bench(lambda m=module, x=inputs: m.launch(*x)),
            }
            err = (module.launch(*inputs).float() - module.reference(*inputs).float()).abs().max().item()
        row = {"kernel": module.NAME, "model": model, "shape": label, "eager_ms": round(ms["eager"], 4),
               "compiled_ms": round(ms["compiled"], 4), "farm_ms": round(ms["farm"], 4),
               "vs_eager": round(ms["eager"] / ms["farm"], 3), "vs_compiled": round(ms["compiled"] / ms["farm"], 3),
               "max_abs_err": err}
        results.append(row)
        print(f"{module.NAME:<16} {label:<28} {ms['eager']:>9.3f} {ms['compiled']:>10.3f} {ms['farm']:>8.3f} "
              f"{row['vs_eager']:>7.2f}x {row['vs_compiled']:>9.2f}x", file=sys.stderr)
        del inputs
        torch.cuda.empty_cache()
    goals = {"vs_eager": 1.5, "vs_compiled": 1.1}
    missed = sorted({r["kernel"] for r in results for k, g in goals.items() if r[k] < g})
    print(json.dumps({"gpu": True, "device": torch.cuda.get_device_name(), "date": stamp, "dtype": args.dtype,
                      "torch": torch.__version__, "triton": triton.__version__, "command": " ".join(sys.argv),
                      "goals": goals, "below_goal": missed, "results": results}))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    sys.exit(main())
