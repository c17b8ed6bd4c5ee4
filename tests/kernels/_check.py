"""Shared checks for kernel tests: per-dtype tolerances and a readable first mismatch."""

from __future__ import annotations

import random

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# Kernel and reference both compute in fp32 from the same inputs and round once, so they may
# differ by about one unit in the last place of the output dtype: 2^-23, 2^-10, 2^-7
# relative; atol covers results near zero, where reduction order changes the last bits.
TOL = {torch.float32: (2e-5, 2e-5), torch.float16: (2e-3, 4e-3), torch.bfloat16: (1.6e-2, 1.6e-2)}
PRIMES = [1, 2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37]


def shapes(seed: int, n: int, make):
    """n shapes drawn by `make(rng)` from a seeded RNG (the same shapes on every run)."""
    rng = random.Random(seed)
    return [make(rng) for _ in range(n)]


def triton_required():
    try:
        import triton  # noqa: F401
    except ImportError:
        pytest.skip("triton is not installed (pip install 'farm[kernels]'); the ops run their references")


def nan_like(t: torch.Tensor, shape=None, dtype=None) -> torch.Tensor:
    """An output buffer full of NaN: any element the kernel fails to write stays NaN."""
    return torch.full(shape or t.shape, float("nan"), dtype=dtype or t.dtype)


def assert_close(got: torch.Tensor, want: torch.Tensor, dtype: torch.dtype, what: str):
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert got.dtype == want.dtype, f"{what}: dtype {got.dtype}, expected {want.dtype}"
    g, w = got.float(), want.float()
    nan = torch.isnan(g)
    if nan.any():
        idx = tuple(int(i) for i in nan.nonzero()[0])
        pytest.fail(f"{what}: {int(nan.sum())} of {g.numel()} elements NaN (unwritten?), first at {idx}")
    atol, rtol = TOL[dtype]
    bad = (g - w).abs() > atol + rtol * w.abs()
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        err = (g - w).abs().max().item()
        pytest.fail(f"{what}: {int(bad.sum())} of {g.numel()} elements off (atol {atol}, rtol {rtol}); first at "
                    f"{idx}: got {g[idx].item():.6g}, expected {w[idx].item():.6g}; max abs error {err:.3g}")


def compiled_matches(fn, *args):
    """fn traced by torch.compile(fullgraph=True) gives what fn gives eagerly. aot_eager runs
    AOTAutograd's functionalisation and the fake implementation, which is where a custom op
    without a proper fake breaks; Inductor's CPU code generation is left to the slow test."""
    torch._dynamo.reset()
    want = fn(*args)
    got = torch.compile(fn, backend="aot_eager", fullgraph=True)(*args)
    torch.testing.assert_close(got, want)
