"""What the graph matchers beside each kernel share: reading a Dynamo FX graph's nodes and
swapping a matched pattern for one op.

Each `kernels/<op>.py` exports `match(graph, node) -> bool`, which replaces the pattern
ending at `node` with its op and says whether it did; `farm.acceleration.rewrite` runs
every op's matcher over every node, in the order of `kernels.OPS`. Patterns are found by
their operations and the shapes Dynamo recorded, never by module or model names.
"""

from __future__ import annotations

import operator

import torch
import torch.fx as fx
import torch.nn.functional as F

_PURE_METHODS = {"float", "to", "type_as", "type", "unflatten", "unbind", "chunk", "reshape", "add", "sub", "mul",
                 "pow", "mean"}


def drop_dead(g):
    """Remove what the replacements left unused, but only nodes of the kinds the patterns are
    made of. Not `graph.eliminate_dead_code()`: it counts every `call_method` as pure, so it
    would drop an unused in-place `x.add_(y)` from a Dynamo graph, and with it the mutation."""
    pure = {fn for kind in ("layer_norm", "rms_norm", "group_norm", "silu", "gelu", "add", "sub", "mul",
                            "empty_like", "getitem") for fn in _fns()[kind]} | {rsqrt()}
    changed = True
    while changed:
        changed = False
        for node in reversed(list(g.nodes)):
            if node.users or node.op not in ("call_function", "call_method"):
                continue
            if (node.op == "call_function" and node.target in pure) or (
                    node.op == "call_method" and node.target in _PURE_METHODS):
                g.erase_node(node)
                changed = True


def _fns():
    return {
        "layer_norm": (F.layer_norm, torch.layer_norm),
        "rms_norm": (F.rms_norm, torch.rms_norm),
        "group_norm": (F.group_norm, torch.group_norm),
        "silu": (F.silu,),
        "gelu": (F.gelu, torch._C._nn.gelu),
        "add": (operator.add, torch.add),
        "sub": (operator.sub, torch.sub),
        "mul": (operator.mul, torch.mul),
        "empty_like": (torch.empty_like,),
        "setitem": (operator.setitem,),
        "getitem": (operator.getitem,),
    }


_FN = None


def is_op(node, kind: str) -> bool:
    global _FN
    if _FN is None:
        _FN = _fns()
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function":
        return node.target in _FN[kind]
    return node.op == "call_method" and node.target == kind and kind in ("add", "sub", "mul")


def val(node):
    """The fake tensor Dynamo recorded for a node (None for non-tensors)."""
    v = node.meta.get("example_value") if isinstance(node, fx.Node) else None
    return v if isinstance(v, torch.Tensor) else None


def arg(node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def only_user(node, user) -> bool:
    return list(node.users) == [user]


def strip_casts(node):
    """Skip dtype casts that change nothing (`.float()` of an fp32 tensor, Wan's habit)."""
    while node.op == "call_method" and node.target in ("float", "to", "type_as", "type"):
        src = node.args[0]
        a, b = val(node), val(src)
        if a is None or b is None or a.dtype != b.dtype or a.device != b.device or a.shape != b.shape:
            break
        node = src
    return node


def operands(node, kind: str):
    """(a, b) of a binary `kind` node, else None."""
    if not is_op(node, kind) or len(node.args) != 2 or node.kwargs:
        return None
    return node.args


def replace(g, node, op, args, erase=()):
    with g.inserting_before(node):
        new = g.call_function(op, tuple(args))
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    for dead in erase:
        if not dead.users:
            g.erase_node(dead)
    return new


def broadcast_rows(t, x) -> bool:
    """t is (B|1, 1|L, D) against x (B, L, D): per-sample or per-token modulation."""
    return (t is not None and t.ndim == 3 and t.shape[-1] == x.shape[-1] and t.shape[0] in (1, x.shape[0])
            and t.shape[1] in (1, x.shape[1]))


def rsqrt():
    return torch.rsqrt
