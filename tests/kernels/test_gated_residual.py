import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import gated_residual as gr


def _case(rng):
    return rng.choice([1, 2, 3]), rng.choice(PRIMES), rng.choice([5, 13, 37, 131, 2053])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_reference(dtype):
    triton_required()
    for i, (b, l, d) in enumerate(shapes(3, 8, _case)):
        x, y = torch.randn(b, l, d).to(dtype), torch.randn(b, l, d).to(dtype)
        # Wan: fp32 residual stream and gate, model-dtype branch output.
        if i % 2:
            x = x.float()
        gate = torch.randn((b, l, d) if i % 3 == 2 else (b, 1, d)).to(torch.float32 if i % 2 else dtype)
        want = gr.reference(x, y, gate)
        out = gr.launch(x, y, gate, out=nan_like(x, dtype=want.dtype))
        assert_close(out, want, dtype, f"gated_residual{(b, l, d)} {dtype} gate {tuple(gate.shape)}")


def test_traces_under_compile_fullgraph():
    x, y, g = torch.randn(2, 7, 13), torch.randn(2, 7, 13), torch.randn(2, 1, 13)
    compiled_matches(lambda x, y, g: torch.ops.farm.gated_residual(x, y.sin(), g) - 1, x, y, g)
