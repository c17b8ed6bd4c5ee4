"""What every kernel file shares: whether Triton is importable, and when to launch it.

A kernel runs when Triton is installed and the tensor is on a CUDA device, or when
`TRITON_INTERPRET=1` (Triton's interpreter runs the same kernel on CPU tensors with numpy;
that is how the tests check kernels on machines without a GPU). Otherwise each op runs its
PyTorch reference, so a model rewired to these ops still works everywhere, only not faster.
`TRITON_INTERPRET` is read by `triton.jit` when a kernel is defined, so it must be set
before `kernels` is imported (tests/kernels/conftest.py does).
"""

from __future__ import annotations

import os

try:
    import triton
    import triton.language as tl

    HAVE_TRITON = True
except ImportError:  # CPU machines without the `kernels` extra
    triton = tl = None
    HAVE_TRITON = False

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(x) -> bool:
    """True when ops on `x` should launch their Triton kernel rather than the reference."""
    return HAVE_TRITON and (x.is_cuda or (INTERPRET and x.device.type == "cpu"))


def backend() -> str:
    """How the ops run on this machine, in words for reports."""
    if not HAVE_TRITON:
        return "reference (triton not installed)"
    import torch

    if torch.cuda.is_available():
        return "triton"
    return "triton interpreter (CPU)" if INTERPRET else "reference (no CUDA; set TRITON_INTERPRET=1 to interpret)"


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())

