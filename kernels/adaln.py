"""LayerNorm or RMSNorm fused with AdaLN modulation: `norm(x) * (1 + scale) + shift`.

Every DiT block (Wan, Flux, SD3, LTX) opens its attention and its MLP this way, with scale
and shift computed per sample from the timestep (shape (B, 1, D)) or per token (Wan 2.2
TI2V: (B, L, D)). Eager PyTorch makes four passes over (B, L, D) (norm, 1 + scale, multiply,
add) plus the casts Wan adds around its fp32 norm; the kernel reads x once and writes once.

One program per token row; D fits one block (Wan 14B: 5120, Flux: 3072, Wan 1.3B: 1536).
Statistics in fp32. The result has the dtype PyTorch's type promotion gives x with scale
(Wan: fp32 scale, so fp32 out, then Wan's own `.type_as`), so swapping the op in changes no
dtype anywhere in a graph.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._runtime import HAVE_TRITON, next_pow2, use_triton

NAME = "adaln"


def _out_dtype(x, scale, shift):
    return torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)


def reference(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], scale: torch.Tensor,
              shift: torch.Tensor, eps: float, rms: bool = False) -> torch.Tensor:
    xf = x.float()
    if rms:
        y = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    else:
        y = torch.nn.functional.layer_norm(xf, (x.shape[-1],), None, None, eps)
    if weight is not None:
        y = y * weight.float()
    if bias is not None:
        y = y + bias.float()
    y = y * (1 + scale.float()) + shift.float()
    return y.to(_out_dtype(x, scale, shift))


if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(x_ptr, w_ptr, b_ptr, sc_ptr, sh_ptr, y_ptr, L, D, eps,
                sc_b, sc_l, sh_b, sh_l,
                HAS_W: tl.constexpr, HAS_B: tl.constexpr, RMS: tl.constexpr, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        b = row // L
        t = row % L
        offs = tl.arange(0, BLOCK)
        m = offs < D
        x = tl.load(x_ptr + row.to(tl.int64) * D + offs, mask=m, other=0.0).to(tl.float32)
        if RMS:
            y = x * (1.0 / tl.sqrt(tl.sum(x * x, axis=0) / D + eps))
        else:
            mean = tl.sum(x, axis=0) / D
            d = tl.where(m, x - mean, 0.0)
            y = d * (1.0 / tl.sqrt(tl.sum(d * d, axis=0) / D + eps))
        if HAS_W:
            y = y * tl.load(w_ptr + offs, mask=m, other=1.0).to(tl.float32)
        if HAS_B:
            y = y + tl.load(b_ptr + offs, mask=m, other=0.0).to(tl.float32)
        sc = tl.load(sc_ptr + b * sc_b + t * sc_l + offs, mask=m, other=0.0).to(tl.float32)
        sh = tl.load(sh_ptr + b * sh_b + t * sh_l + offs, mask=m, other=0.0).to(tl.float32)
        y = y * (1.0 + sc) + sh
        tl.store(y_ptr + row.to(tl.int64) * D + offs, y.to(y_ptr.dtype.element_ty), mask=m)


def _rows(t: torch.Tensor, shape) -> tuple[torch.Tensor, int, int]:
    """Broadcast scale/shift to (B, L, D) without copying; return it and its batch/token strides."""
    t = t.expand(shape)
    if t.stride(-1) != 1:
        t = t.contiguous()
    return t, t.stride(0), t.stride(1)


def launch(x, weight, bias, scale, shift, eps, rms=False, out=None):
    if x.ndim != 3:
        raise ValueError(f"adaln expects x of shape (batch, tokens, dim), got {tuple(x.shape)}")
    x = x.contiguous()
    B, L, D = x.shape
    out = torch.empty(x.shape, dtype=_out_dtype(x, scale, shift), device=x.device) if out is None else out
    sc, sc_b, sc_l = _rows(scale, x.shape)
    sh, sh_b, sh_l = _rows(shift, x.shape)
    _kernel[(B * L,)](x, weight if weight is not None else x, bias if bias is not None else x, sc, sh, out,
                      L, D, eps, sc_b, sc_l, sh_b, sh_l, HAS_W=weight is not None, HAS_B=bias is not None,
                      RMS=rms, BLOCK=next_pow2(D))
    return out


@torch.library.custom_op("farm::adaln", mutates_args=())
def adaln(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], scale: torch.Tensor,
          shift: torch.Tensor, eps: float, rms: bool = False) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift, with norm a LayerNorm (or RMSNorm, rms=True) over the last dim."""
    if use_triton(x) and x.ndim == 3:
        return launch(x, weight, bias, scale, shift, eps, rms)
    return reference(x, weight, bias, scale, shift, eps, rms)


@adaln.register_fake
def _(x, weight, bias, scale, shift, eps, rms=False):
    return x.new_empty(x.shape, dtype=_out_dtype(x, scale, shift))
