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

import torch

from ._fx import arg, is_op, operands, val
from ._runtime import HAVE_TRITON, next_pow2, use_triton

NAME = "rmsnorm_rope"


def reference(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int,
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
def rmsnorm_rope(x: torch.Tensor, weight: torch.Tensor | None, cos: torch.Tensor, sin: torch.Tensor, heads: int,
                 eps: float, per_head: bool = False) -> torch.Tensor:
    """(B, L, H*Dh) -> (B, L, H, Dh): RMSNorm (across heads, or per head) then rotary embedding."""
    if use_triton(x):
        return launch(x, weight, cos, sin, heads, eps, per_head)
    return reference(x, weight, cos, sin, heads, eps, per_head)


@rmsnorm_rope.register_fake
def _(x, weight, cos, sin, heads, eps, per_head=False):
    return x.new_empty((x.shape[0], x.shape[1], heads, x.shape[2] // heads))


# --- the pattern this op replaces in a Dynamo graph (farm.acceleration.rewrite runs it) ---


def match(g, node) -> bool:
    """Wan's rotary embedding after its q/k RMSNorm, as Dynamo records it:

        t = unflatten(rms_norm(q, (H*Dh,), w, eps), 2, (H, -1))      # or rms_norm per head
        x1, x2 = unbind(unflatten(t, -1, (-1, 2)), -1)
        out = empty_like(t)
        out[..., 0::2] = x1 * cos - x2 * sin
        out[..., 1::2] = x1 * sin + x2 * cos
    """
    if not is_op(node, "empty_like"):
        return False
    t = node.args[0]
    tv = val(t)
    if tv is None or tv.ndim != 4:
        return False
    B, L, H, Dh = tv.shape
    sets = [u for u in node.users if is_op(u, "setitem")]
    if len(sets) != 2:
        return False
    halves = {}
    for s in sets:
        idx = s.args[1]
        if not (isinstance(idx, tuple) and len(idx) == 2 and idx[0] is Ellipsis and isinstance(idx[1], slice)
                and idx[1].step == 2 and idx[1].stop is None and idx[1].start in (0, 1)):
            return False
        halves[idx[1].start] = s
    if set(halves) != {0, 1}:
        return False
    # out[0::2] = x1*cos - x2*sin ; out[1::2] = x1*sin + x2*cos
    first, second = halves[0].args[2], halves[1].args[2]
    sub, add = operands(first, "sub"), operands(second, "add")
    if sub is None or add is None:
        return False

    def factors(n):
        p = operands(n, "mul")
        return None if p is None else p

    f = [factors(sub[0]), factors(sub[1]), factors(add[0]), factors(add[1])]
    if any(x is None for x in f):
        return False
    x1 = x2 = cos = sin = None
    for a, b in (f[0], f[0][::-1]):
        if is_op(a, "getitem") and a.args[1] == 0:
            x1, cos = a, b
    for a, b in (f[1], f[1][::-1]):
        if is_op(a, "getitem") and a.args[1] == 1:
            x2, sin = a, b
    if x1 is None or x2 is None or x1.args[0] is not x2.args[0]:
        return False
    if {id(v) for v in f[2]} != {id(x1), id(sin)} or {id(v) for v in f[3]} != {id(x2), id(cos)}:
        return False
    unbind = x1.args[0]
    if not (unbind.op == "call_method" and unbind.target == "unbind" and arg(unbind, 1, "dim", 0) in (-1, 4)):
        return False
    pairs = unbind.args[0]
    if not (pairs.op == "call_method" and pairs.target == "unflatten" and pairs.args[0] is t
            and pairs.args[1] in (-1, 3) and tuple(pairs.args[2]) == (-1, 2)):
        return False
    cv, sv = val(cos), val(sin)
    if cv is None or sv is None or cv.numel() != L * Dh // 2 or sv.numel() != L * Dh // 2 or cv.ndim != 4:
        return False
    if tuple(cv.shape) != (1, L, 1, Dh // 2) or tuple(sv.shape) != (1, L, 1, Dh // 2):
        return False
    # Where the norm is: across heads before the unflatten, or per head after it.
    if t.op == "call_method" and t.target == "unflatten" and is_op(t.args[0], "rms_norm"):
        norm, per_head = t.args[0], False
        if tuple(arg(norm, 1, "normalized_shape")) != (H * Dh,):
            return False
        q = norm.args[0]
    elif is_op(t, "rms_norm") and t.args[0].op == "call_method" and t.args[0].target == "unflatten":
        norm, per_head = t, True
        if tuple(arg(norm, 1, "normalized_shape")) != (Dh,):
            return False
        q = t.args[0].args[0]
    else:
        return False
    qv = val(q)
    if qv is None or tuple(qv.shape) != (B, L, H * Dh) or qv.dtype != tv.dtype:
        return False
    eps = arg(norm, 3, "eps", None)
    eps = torch.finfo(qv.dtype).eps if eps is None else float(eps)
    others = [u for u in node.users if u not in sets]
    with g.inserting_before(halves[0]):
        c2 = g.call_method("reshape", (cos, L, Dh // 2))
        s2 = g.call_method("reshape", (sin, L, Dh // 2))
        new = g.call_function(torch.ops.farm.rmsnorm_rope.default,
                              (q, arg(norm, 2, "weight"), c2, s2, H, eps, per_head))
    new.meta = dict(node.meta)
    for u in others:
        u.replace_input_with(node, new)
    for s in sets:
        g.erase_node(s)
    for dead in (first, second, *sub, *add):
        if not dead.users:
            g.erase_node(dead)
    g.erase_node(node)
    return True
