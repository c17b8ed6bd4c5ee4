"""GELU, exact (erf) or tanh-approximated: the activation of DiT MLPs (Wan, Flux, SD3 use
`gelu(approximate="tanh")`).

A single element-wise op: Inductor already generates the same kernel, so this one is for
eager mode and for graphs where the activation sits next to ops Inductor leaves alone.
tanh is computed as 2 * sigmoid(2u) - 1 (Triton has no portable tanh across its CUDA and
interpreter back-ends; the identity costs one extra multiply and is within 2 ulp in fp32).
"""

from __future__ import annotations

import torch

from ._fx import arg, is_op, replace, val
from ._runtime import HAVE_TRITON, use_triton

NAME = "gelu"


def reference(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    return torch.nn.functional.gelu(x.float(), approximate=approximate).to(x.dtype)


if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _gelu(x, TANH: tl.constexpr):
        if TANH:
            u = 0.7978845608028654 * (x + 0.044715 * x * x * x)  # sqrt(2 / pi)
            return 0.5 * x * (1.0 + (2.0 * tl.sigmoid(2.0 * u) - 1.0))
        else:
            return 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))

    @triton.jit
    def _kernel(x_ptr, y_ptr, n, TANH: tl.constexpr, BLOCK: tl.constexpr):
        offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
        m = offs < n
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(y_ptr + offs, _gelu(x, TANH).to(y_ptr.dtype.element_ty), mask=m)


def launch(x, approximate="tanh", out=None):
    x = x.contiguous()
    out = torch.empty_like(x) if out is None else out
    n = x.numel()
    block = 1024  # 4 KB of fp32 per program; memory-bound, so the block only needs to fill a warp's loads
    _kernel[(triton.cdiv(n, block),)](x, out, n, TANH=approximate == "tanh", BLOCK=block)
    return out


@torch.library.custom_op("farm::gelu", mutates_args=())
def gelu(x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """torch.nn.functional.gelu(x, approximate=...) computed in fp32."""
    if use_triton(x):
        return launch(x, approximate)
    return reference(x, approximate)


@gelu.register_fake
def _(x, approximate="tanh"):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


# --- the pattern this op replaces in a Dynamo graph (farm.acceleration.rewrite runs it) ---


def match(g, node) -> bool:
    if not is_op(node, "gelu") or arg(node, 1, "approximate", "none") != "tanh" or val(node) is None:
        return False
    replace(g, node, torch.ops.farm.gelu.default, (node.args[0], "tanh"))
    return True
