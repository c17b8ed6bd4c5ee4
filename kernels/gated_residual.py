"""The gated residual of DiT blocks: `x + y * gate`, gate per sample (B, 1, D) or per token.

Alone it is a single element-wise pass, which Inductor already fuses; it earns a kernel only
in eager mode (three passes and two temporaries become one pass) and as the op the tracing
pass rewires so a block's graph holds one node per fused step. Computed in fp32; the result
has PyTorch's promoted dtype of the three inputs (Wan: fp32 residual stream).
"""

from __future__ import annotations

import torch

from ._fx import broadcast_rows, only_user, operands, replace, val
from ._runtime import HAVE_TRITON, next_pow2, use_triton

NAME = "gated_residual"


def _out_dtype(x, y, gate):
    return torch.promote_types(torch.promote_types(x.dtype, y.dtype), gate.dtype)


def reference(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    return (x.float() + y.float() * gate.float()).to(_out_dtype(x, y, gate))


if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(x_ptr, y_ptr, g_ptr, o_ptr, L, D, g_b, g_l, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        tile = tl.program_id(1)
        b = row // L
        t = row % L
        offs = tile * BLOCK + tl.arange(0, BLOCK)
        m = offs < D
        base = row.to(tl.int64) * D
        x = tl.load(x_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + base + offs, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + b * g_b + t * g_l + offs, mask=m, other=0.0).to(tl.float32)
        tl.store(o_ptr + base + offs, (x + y * g).to(o_ptr.dtype.element_ty), mask=m)


def launch(x, y, gate, out=None):
    if x.ndim != 3 or y.shape != x.shape:
        raise ValueError(f"gated_residual expects x and y of one shape (batch, tokens, dim), got "
                         f"{tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.contiguous(), y.contiguous()
    B, L, D = x.shape
    out = torch.empty(x.shape, dtype=_out_dtype(x, y, gate), device=x.device) if out is None else out
    g = gate.expand(x.shape)
    if g.stride(-1) != 1:
        g = g.contiguous()
    block = min(next_pow2(D), 2048)
    _kernel[(B * L, triton.cdiv(D, block))](x, y, g, out, L, D, g.stride(0), g.stride(1), BLOCK=block)
    return out


@torch.library.custom_op("farm::gated_residual", mutates_args=())
def gated_residual(x: torch.Tensor, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """x + y * gate (gate broadcast over tokens)."""
    if use_triton(x) and x.ndim == 3 and y.shape == x.shape:
        return launch(x, y, gate)
    return reference(x, y, gate)


@gated_residual.register_fake
def _(x, y, gate):
    return x.new_empty(torch.broadcast_shapes(x.shape, y.shape, gate.shape), dtype=_out_dtype(x, y, gate))


# --- the pattern this op replaces in a Dynamo graph (farm.acceleration.rewrite runs it) ---


def match(g, node) -> bool:
    pair = operands(node, "add")
    if pair is None:
        return False
    for x, prod in (pair, pair[::-1]):
        mul = operands(prod, "mul")
        if mul is None or not only_user(prod, node):
            continue
        for y, gate in (mul, mul[::-1]):
            xv, yv, gv, out = val(x), val(y), val(gate), val(node)
            if xv is None or yv is None or out is None or xv.ndim != 3 or yv.shape != xv.shape:
                continue
            # A gate per sample, broadcast over tokens. A per-token gate (Wan 2.2 TI2V) has y's
            # shape and cannot be told from any a + b * c; the op takes it, the pass leaves it.
            if gv is None or not broadcast_rows(gv, xv) or gv.shape[1] != 1 or xv.shape[1] == 1:
                continue
            dtype = torch.promote_types(torch.promote_types(xv.dtype, yv.dtype), gv.dtype)
            if out.shape != xv.shape or out.dtype != dtype:
                continue
            replace(g, node, torch.ops.farm.gated_residual.default, (x, y, gate), erase=(prod,))
            return True
    return False
