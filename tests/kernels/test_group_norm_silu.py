import pytest
import torch
from _check import DTYPES, PRIMES, assert_close, compiled_matches, nan_like, shapes, triton_required

from kernels import group_norm_silu as gn


def _case(rng):
    groups = rng.choice([1, 3, 5, 7])
    return (rng.choice([1, 2, 3]), groups * rng.choice([1, 2, 3]), rng.choice(PRIMES[:8]), rng.choice(PRIMES[:8]))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("silu", [True, False])
def test_matches_reference(dtype, silu):
    triton_required()
    for n, c, h, w in shapes(1, 6, _case):
        # A one-element group has zero variance: its output is rounding noise times
        # 1/sqrt(eps) = 316 in any implementation, so it is left out.
        for groups in {g for g in (1, 3, 5, 7) if c % g == 0 and c // g * h * w > 1}:
            # An offset mean (|mean| = 20 x std) checks the two-pass statistics.
            x = (torch.randn(n, c, h, w) * 1.5 + 20).to(dtype)
            weight, bias = torch.randn(c).to(dtype), torch.randn(c).to(dtype)
            # block=32: most of these groups span several chunks, as real ones (4096 each) do
            out = gn.launch(x, weight, bias, groups, 1e-5, silu, out=nan_like(x), block=32)
            assert_close(out, gn.reference(x, weight, bias, groups, 1e-5, silu), dtype,
                         f"group_norm_silu{(n, c, h, w)} groups={groups} {dtype} silu={silu}")


@pytest.mark.parametrize("block", [4096, 64])
def test_groups_split_into_chunks(block):
    """A group larger than one block is split into chunks whose statistics are merged; a
    last chunk shorter than the others must count only its own elements."""
    triton_required()
    x = torch.randn(2, 6, 53, 47) * 0.5 + 7  # 2 groups of 3 x 2491 = 7473 elements: 2 chunks of 4096, 117 of 64
    out = gn.launch(x, None, None, 2, 1e-6, True, out=nan_like(x), block=block)
    assert_close(out, gn.reference(x, None, None, 2, 1e-6, True), torch.float32, f"group of 7473, block {block}")


def test_op_matches_eager_group_norm_then_silu():
    """The registered op equals what a UNet resnet block computes with nn modules."""
    x = torch.randn(2, 12, 7, 5)
    norm = torch.nn.GroupNorm(4, 12)
    with torch.no_grad():
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
        got = torch.ops.farm.group_norm_silu(x, norm.weight, norm.bias, 4, norm.eps, True)
        torch.testing.assert_close(got, torch.nn.functional.silu(norm(x)), atol=2e-5, rtol=2e-5)


def test_traces_under_compile_fullgraph():
    x, w, b = torch.randn(2, 9, 5, 3), torch.randn(9), torch.randn(9)
    compiled_matches(lambda x, w, b: torch.ops.farm.group_norm_silu(x * 2, w, b, 3, 1e-5, True) + 1, x, w, b)
