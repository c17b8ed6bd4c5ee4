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

import operator

import torch

from ._fx import arg, broadcast_rows, is_op, only_user, operands, replace, rsqrt, strip_casts, val
from ._runtime import HAVE_TRITON, next_pow2, use_triton

NAME = "adaln"


def _out_dtype(x, scale, shift):
    return torch.promote_types(torch.promote_types(x.dtype, scale.dtype), shift.dtype)


def reference(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, scale: torch.Tensor,
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
def adaln(x: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None, scale: torch.Tensor,
          shift: torch.Tensor, eps: float, rms: bool = False) -> torch.Tensor:
    """norm(x) * (1 + scale) + shift, with norm a LayerNorm (or RMSNorm, rms=True) over the last dim."""
    if use_triton(x) and x.ndim == 3:
        return launch(x, weight, bias, scale, shift, eps, rms)
    return reference(x, weight, bias, scale, shift, eps, rms)


@adaln.register_fake
def _(x, weight, bias, scale, shift, eps, rms=False):
    return x.new_empty(x.shape, dtype=_out_dtype(x, scale, shift))


# --- the pattern this op replaces in a Dynamo graph (farm.acceleration.rewrite runs it) ---


def match(g, node) -> bool:
    pair = operands(node, "add")
    if pair is None:
        return False
    for prod, shift in (pair, pair[::-1]):
        mul = operands(prod, "mul")
        if mul is None or not only_user(prod, node):
            continue
        for normed, one_plus in (mul, mul[::-1]):
            index = indexed = None
            if is_op(one_plus, "getitem") and only_user(one_plus, prod):  # CogVideoX: (1 + scale)[:, None, :]
                index, indexed, one_plus = one_plus.args[1], one_plus, one_plus.args[0]
            op = operands(one_plus, "add")
            if op is None or not hasattr(normed, "op"):
                continue
            scale = op[1] if op[0] == 1 else op[0] if op[1] == 1 else None
            norm = strip_casts(normed)
            if scale is None:
                continue
            if is_op(norm, "rms_norm") or is_op(norm, "layer_norm"):
                rms, x_node = is_op(norm, "rms_norm"), norm.args[0]
                xv = val(x_node)
                if xv is None or tuple(arg(norm, 1, "normalized_shape")) != (xv.shape[-1],):
                    continue
                weight = arg(norm, 2, "weight")
                bias = None if rms else arg(norm, 3, "bias")
                eps = arg(norm, 3 if rms else 4, "eps", None if rms else 1e-5)
            else:  # diffusers' RMSNorm module, written out (LTX)
                chain = rms_chain(normed)
                if chain is None:
                    continue
                rms, bias, (x_node, weight, eps) = True, None, chain
            x, out = val(x_node), val(node)
            if x is None or out is None or x.ndim != 3 or out.shape != x.shape:
                continue
            sc, sh = val(indexed if index is not None else scale), val(shift)
            if not (broadcast_rows(sc, x) and broadcast_rows(sh, x)) or (index is not None and val(scale) is None):
                continue
            if torch.promote_types(torch.promote_types(x.dtype, sc.dtype), sh.dtype) != out.dtype:
                continue
            if eps is None:
                eps = torch.finfo(x.dtype).eps
            if index is not None:  # the op takes scale[:, None, :] itself
                with g.inserting_before(node):
                    scale = g.call_function(operator.getitem, (scale, index))
                scale.meta["example_value"] = sc
            replace(g, node, torch.ops.farm.adaln.default, (x_node, weight, bias, scale, shift, float(eps), rms),
                     erase=(prod,))
            return True
    return False


def rms_chain(node):
    """(x, weight or None, eps) if `node` ends an RMSNorm written out as diffusers' `RMSNorm`
    module does it: `x * rsqrt(x.to(float32).pow(2).mean(-1, keepdim=True) + eps)`, cast back
    to x's dtype or times a weight over the last dim; else None."""
    def uncast(n):
        while hasattr(n, "op") and n.op == "call_method" and n.target in ("to", "float", "type_as", "type"):
            n = n.args[0]
        return n

    def normalized(n):  # x * rsqrt(mean(x.float() ** 2, -1, keepdim=True) + eps) -> (x, eps)
        pair = operands(n, "mul")
        for x, r in (pair, pair[::-1]) if pair else ():
            if not (hasattr(r, "op") and r.op == "call_function" and r.target is rsqrt()):
                continue
            added = operands(r.args[0], "add")
            if added is None or not isinstance(added[1], float):
                continue
            mean = added[0]
            if not (hasattr(mean, "op") and mean.op == "call_method" and mean.target == "mean"
                    and tuple(mean.args[1:]) in ((-1,), ((-1,),)) and mean.kwargs == {"keepdim": True}):
                continue
            power = mean.args[0]
            if (hasattr(power, "op") and power.op == "call_method" and power.target == "pow"
                    and power.args[1:] == (2,) and uncast(power.args[0]) is x):
                return x, added[1]
        return None

    n = uncast(node)
    found = normalized(n)
    if found is not None:
        return found[0], None, found[1]
    pair = operands(n, "mul")
    for h, w in (pair, pair[::-1]) if pair else ():
        found, wv, hv = normalized(uncast(h)), val(w), val(h)
        if found is not None and wv is not None and hv is not None and wv.shape == (hv.shape[-1],):
            return found[0], w, found[1]
    return None
