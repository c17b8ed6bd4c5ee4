"""Run by test_on_gpu.py in a fresh process with TRITON_INTERPRET=0: the compiled kernels on
CUDA against their references, at shapes with real models' widths, and each op inside a
torch.compile(fullgraph=True) graph compiled by Inductor. Prints one JSON line."""

import json
import sys

import torch

from kernels import adaln, gated_residual, gelu, glu, group_norm_silu, rmsnorm_rope

TOL = {torch.float32: 2e-5, torch.float16: 4e-3, torch.bfloat16: 1.6e-2}


def cases(dt):
    def t(*s, d=dt):
        return torch.randn(*s, device="cuda", dtype=d)

    return [
        (group_norm_silu, (t(2, 320, 33, 31), t(320), t(320), 32, 1e-5, True)),
        (adaln, (t(2, 997, 1536), None, None, t(2, 1, 1536, d=torch.float32), t(2, 1, 1536, d=torch.float32),
                 1e-6, False)),
        (adaln, (t(1, 509, 3072), t(3072), None, t(1, 1, 3072), t(1, 1, 3072), 1e-6, True)),
        (gated_residual, (t(2, 997, 1536, d=torch.float32), t(2, 997, 1536), t(2, 1, 1536, d=torch.float32))),
        (rmsnorm_rope, (t(1, 509, 12 * 128), t(12 * 128), t(509, 64, d=torch.float32), t(509, 64, d=torch.float32),
                        12, 1e-6, False)),
        (rmsnorm_rope, (t(1, 509, 24 * 128), t(128), t(509, 64, d=torch.float32), t(509, 64, d=torch.float32),
                        24, 1e-6, True)),
        (gelu, (t(1, 509, 8960), "tanh")),
        (glu, (t(2, 257, 2 * 2560), "gelu")),
    ]


def main():
    failures = []
    for dt in TOL:
        for module, args in cases(dt):
            got, want = module.launch(*args), module.reference(*args)
            err = ((got.float() - want.float()).abs() / (1 + want.float().abs())).max().item()
            if not torch.isfinite(got).all() or err > TOL[dt]:
                failures.append(f"{module.NAME} {dt}: relative error {err:.3g}")
    op = torch.compile(lambda x, w, b: torch.ops.farm.group_norm_silu(x * 2, w, b, 32, 1e-5, True) + 1,
                       fullgraph=True)
    x, w, b = cases(torch.bfloat16)[0][1][:3]
    if not torch.allclose(op(x, w, b).float(), (group_norm_silu.reference(x * 2, w, b, 32, 1e-5) + 1).float(),
                          atol=3e-2, rtol=3e-2):
        failures.append("group_norm_silu under Inductor differs")
    print(json.dumps({"failures": failures}))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
