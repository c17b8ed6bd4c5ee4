import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import rmsnorm_rope as rr


def _case(rng):
    return rng.choice([1, 2]), rng.choice(PRIMES[:10]), rng.choice([1, 2, 3, 5]), rng.choice([2, 6, 10, 16, 22])


def _angles(l, half):
    theta = torch.arange(l)[:, None] * (10000 ** (-torch.arange(half) / half))[None, :]
    return theta.cos(), theta.sin()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("per_head", [False, True], ids=["across_heads", "per_head"])
def test_matches_reference(dtype, per_head):
    triton_required()
    for i, (b, l, h, dh) in enumerate(shapes(6, 6, _case)):
        x = (torch.randn(b, l, h * dh) * 2).to(dtype)
        weight = None if i % 3 == 0 else torch.randn(dh if per_head else h * dh).to(dtype)
        cos, sin = _angles(l, dh // 2)
        out = rr.launch(x, weight, cos, sin, h, 1e-6, per_head, out=nan_like(x, (b, l, h, dh)))
        assert_close(out, rr.reference(x, weight, cos, sin, h, 1e-6, per_head), dtype,
                     f"rmsnorm_rope{(b, l, h, dh)} {dtype} per_head={per_head} w={weight is not None}")


def test_reference_is_what_wan_attention_computes():
    """RMSNorm across heads, unflatten, then Wan's interleaved rotary embedding."""
    b, l, h, dh = 2, 5, 3, 8
    x = torch.randn(b, l, h * dh)
    norm = torch.nn.RMSNorm(h * dh, eps=1e-6)
    torch.nn.init.normal_(norm.weight)
    cos, sin = _angles(l, dh // 2)
    freqs_cos = cos.repeat_interleave(2, -1)[None, :, None, :]  # diffusers' (1, L, 1, Dh) layout
    freqs_sin = sin.repeat_interleave(2, -1)[None, :, None, :]
    with torch.no_grad():
        q = norm(x).unflatten(2, (h, -1))
        x1, x2 = q.unflatten(-1, (-1, 2)).unbind(-1)
        want = torch.empty_like(q)
        want[..., 0::2] = x1 * freqs_cos[..., 0::2] - x2 * freqs_sin[..., 1::2]
        want[..., 1::2] = x1 * freqs_sin[..., 1::2] + x2 * freqs_cos[..., 0::2]
        got = torch.ops.farm.rmsnorm_rope(x, norm.weight, cos, sin, h, 1e-6, False)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_traces_under_compile_fullgraph():
    cos, sin = _angles(7, 3)
    compiled_matches(lambda x, c, s: torch.ops.farm.rmsnorm_rope(x * 2, None, c, s, 2, 1e-6, True).sum(-1),
                     torch.randn(2, 7, 12), cos, sin)
