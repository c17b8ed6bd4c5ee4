"""RMSNorm of queries or keys fused with rotary position embedding (interleaved pairs).

Wan normalises q and k over all heads at once (`rms_norm_across_heads`), Flux per head;
both then rotate pairs (x[2i], x[2i+1]) by the token's angle. Eager PyTorch: the norm, the
unflatten, two strided slices of cos/sin, four multiplies, two strided writes into an
`empty_like`: about seven passes over q (Wan 1.3B at 480p: 32760 tokens x 1536, 100 MB in
fp32 per tensor per block). The kernel reads the row once, writes it once.

cos and sin are given per token and pair, shape (L, Dh/2), in fp32: diffusers builds them
as (1, L, 1, Dh) with each value repeated for the two members of a pair; `cos[..., 0::2]`
is this op's input. One program per token row (all heads), statistics in fp32.
"""

from __future__ import annotations

from typing import Optional

import torch

from ._runtime import HAVE_TRITON, next_pow2, use_triton

NAME = "rmsnorm_rope"


def reference(x: torch.Tensor, weight: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, heads: int,
              eps: float, per_head: bool = False) -> torch.Tensor:
    """x: (B, L, H*Dh) -> (B, L, H, Dh): rms-normalised (over H*Dh, or over each head's Dh),
    scaled by weight (H*Dh, or Dh per head), then pairs rotated by cos/sin (L, Dh/2)."""
    B, L, HD = x.shape
    xf = x.float()
    if per_head:
        xf = xf.unflatten(-1, (heads, -1))
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    xf = xf.reshape(B, L, heads, HD // heads)
    if weight is not None:
        xf = xf * weight.float().reshape(-1, HD // heads) if not per_head else xf * weight.float()
    x1, x2 = xf.unflatten(-1, (-1, 2)).unbind(-1)
    c, s = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
    out = torch.stack((x1 * c - x2 * s, x1 * s + x2 * c), dim=-1).flatten(-2)
    return out.to(x.dtype)


if HAVE_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _kernel(x_ptr, w_ptr, cos_ptr, sin_ptr, y_ptr, L, H, DH, eps,
                HAS_W: tl.constexpr, PER_HEAD: tl.constexpr, W_PER_HEAD: tl.constexpr,
                BLOCK_H: tl.constexpr, BLOCK_P: tl.constexpr):
        row = tl.program_id(0)
        t = row % L
        P = DH // 2
        h = tl.arange(0, BLOCK_H)[:, None]
        p = tl.arange(0, BLOCK_P)[None, :]
        m = (h < H) & (p < P)
        even = h * DH + 2 * p  # offset of the pair's first member in the row
        base = row.to(tl.int64) * H * DH
        x1 = tl.load(x_ptr + base + even, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x_ptr + base + even + 1, mask=m, other=0.0).to(tl.float32)
        ss = x1 * x1 + x2 * x2
        if PER_HEAD:
            r = 1.0 / tl.sqrt(tl.sum(ss, axis=1) / DH + eps)[:, None]
        else:
            r = 1.0 / tl.sqrt(tl.sum(tl.sum(ss, axis=1), axis=0) / (H * DH) + eps)
        x1 = x1 * r
        x2 = x2 * r
        if HAS_W:
            w_off = 2 * p if W_PER_HEAD else even
            x1 = x1 * tl.load(w_ptr + w_off, mask=m, other=1.0).to(tl.float32)
            x2 = x2 * tl.load(w_ptr + w_off + 1, mask=m, other=1.0).to(tl.float32)
        c = tl.load(cos_ptr + t * P + p, mask=p < P, other=1.0).to(tl.float32)
        s = tl.load(sin_ptr + t * P + p, mask=p < P, other=0.0).to(tl.float32)
        tl.store(y_ptr + base + even, (x1 * c - x2 * s).to(y_ptr.dtype.element_ty), mask=m)
        tl.store(y_ptr + base + even + 1, (x1 * s + x2 * c).to(y_ptr.dtype.element_ty), mask=m)


def launch(x, weight, cos, sin, heads, eps, per_head=False, out=None):
    B, L, HD = x.shape
    dh = HD // heads
    if HD % heads or dh % 2:
        raise ValueError(f"{HD} channels do not split into {heads} heads of an even size")
    if cos.shape != (L, dh // 2) or sin.shape != (L, dh // 2):
        raise ValueError(f"cos and sin must be (tokens, head_dim / 2) = {(L, dh // 2)}, got "
                         f"{tuple(cos.shape)} and {tuple(sin.shape)}")
    x, cos, sin = x.contiguous(), cos.contiguous(), sin.contiguous()
    out = x.new_empty((B, L, heads, dh)) if out is None else out
    _kernel[(B * L,)](x, weight if weight is not None else x, cos, sin, out, L, heads, dh, eps,
                      HAS_W=weight is not None, PER_HEAD=per_head,
                      W_PER_HEAD=weight is not None and weight.numel() == dh and heads > 1,
                      BLOCK_H=next_pow2(heads), BLOCK_P=next_pow2(dh // 2))
    return out


@torch.library.custom_op("farm::rmsnorm_rope", mutates_args=())
def rmsnorm_rope(x: torch.Tensor, weight: Optional[torch.Tensor], cos: torch.Tensor, sin: torch.Tensor, heads: int,
                 eps: float, per_head: bool = False) -> torch.Tensor:
    """(B, L, H*Dh) -> (B, L, H, Dh): RMSNorm (across heads, or per head) then rotary embedding."""
    if use_triton(x):
        return launch(x, weight, cos, sin, heads, eps, per_head)
    return reference(x, weight, cos, sin, heads, eps, per_head)


@rmsnorm_rope.register_fake
def _(x, weight, cos, sin, heads, eps, per_head=False):
    return x.new_empty((x.shape[0], x.shape[1], heads, x.shape[2] // heads))
