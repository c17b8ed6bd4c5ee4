import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import adaln


def _case(rng):
    return rng.choice([1, 2, 3]), rng.choice(PRIMES[:9]), rng.choice([7, 13, 31, 37, 96, 131])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("rms", [False, True], ids=["layer", "rms"])
def test_matches_reference(dtype, rms):
    triton_required()
    for i, (b, l, d) in enumerate(shapes(2, 8, _case)):
        x = (torch.randn(b, l, d) * 2 + 3).to(dtype)
        per_token = i % 3 == 2  # Wan 2.2 TI2V modulates per token; others per sample
        mod = (b, l, d) if per_token else (b, 1, d)
        # Wan keeps scale/shift in fp32 whatever the model's dtype; others in the model's.
        mod_dtype = torch.float32 if i % 2 else dtype
        scale, shift = torch.randn(mod).to(mod_dtype) * 0.3, torch.randn(mod).to(mod_dtype)
        weight = torch.randn(d).to(dtype) if i % 4 in (1, 2) else None
        bias = torch.randn(d).to(dtype) if i % 4 == 2 and not rms else None
        want = adaln.reference(x, weight, bias, scale, shift, 1e-6, rms)
        out = adaln.launch(x, weight, bias, scale, shift, 1e-6, rms, out=nan_like(x, dtype=want.dtype))
        assert_close(out, want, want.dtype if want.dtype != torch.float32 else dtype,
                     f"adaln{(b, l, d)} {dtype} scale {tuple(mod)} {mod_dtype} rms={rms} w={weight is not None}")


def test_modulation_from_a_chunk():
    """Wan's scale/shift are chunks of (B, 6, D): non-contiguous views with a batch stride of 6D."""
    triton_required()
    x, table = torch.randn(2, 11, 37), torch.randn(2, 6, 37)
    shift, scale = table.chunk(6, dim=1)[:2]
    out = adaln.launch(x, None, None, scale, shift, 1e-6, False, out=nan_like(x))
    assert_close(out, adaln.reference(x, None, None, scale, shift, 1e-6, False), torch.float32, "chunked")


def test_reference_is_what_a_dit_block_computes():
    x, scale, shift = torch.randn(2, 5, 16), torch.randn(2, 1, 16), torch.randn(2, 1, 16)
    ln = torch.nn.LayerNorm(16, eps=1e-6, elementwise_affine=False)
    torch.testing.assert_close(torch.ops.farm.adaln(x, None, None, scale, shift, 1e-6, False),
                               ln(x) * (1 + scale) + shift, atol=1e-5, rtol=1e-5)


def test_traces_under_compile_fullgraph():
    x, sc, sh = torch.randn(2, 7, 13), torch.randn(2, 1, 13), torch.randn(2, 1, 13)
    compiled_matches(lambda x, sc, sh: torch.ops.farm.adaln(x + 1, None, None, sc, sh, 1e-6, True) * 2, x, sc, sh)
