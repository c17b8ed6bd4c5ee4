"""Fused kernels: farm's own `torch.compile` backend, which rewrites the FX graphs Dynamo hands it.

Dynamo traces the denoiser's forward (across every block, whatever the model) into FX graphs;
`rewrite` runs the matcher of each op in `kernels.OPS` over every node, and each matcher
replaces the pattern it finds by its operations (not by module or model names) with one
fused op (`torch.ops.farm.*`). The graph then goes to Inductor (`compile=True`) or runs as
is. The patterns are described beside their kernels, in `kernels/<op>.py`.
"""

from __future__ import annotations

import hashlib

from ..errors import FarmError


def dynamo_backend(report, kernels: bool, compile: bool):
    """The `torch.compile` backend: rewrite each graph (with kernels), then Inductor (with compile)."""
    def backend(gm, example_inputs):
        if kernels:
            counts = rewrite(gm)
            digest = hashlib.sha1(gm.code.encode()).hexdigest()[:12]
            report.graphs[digest] = counts
        if compile:
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return gm.forward

    return backend


def load_kernels():
    """farm's `kernels` package; a clear error if another package of that name (Hugging Face's
    kernel hub is also called `kernels`) comes first on the path."""
    import kernels

    if not hasattr(kernels, "OPS"):
        raise FarmError(f"`import kernels` found {getattr(kernels, '__file__', None) or 'another package'}, not "
                        "farm's fused kernels: another package named `kernels` (Hugging Face's kernel hub?) shadows "
                        "farm's. Uninstall one, or run without the `kernels` acceleration.", code=2)
    return kernels


def op_names() -> tuple[str, ...]:
    """The ops' names in `kernels.OPS` order, for reports; none if farm's kernels are not importable."""
    try:
        import kernels
    except ImportError:
        return ()
    return tuple(op.NAME for op in getattr(kernels, "OPS", ()))


def rewrite(gm) -> dict:
    """Replace every pattern found in a Dynamo FX graph with its fused op; return the counts."""
    kernels = load_kernels()  # registers torch.ops.farm.*
    from kernels._fx import drop_dead

    counts = {op.NAME: 0 for op in kernels.OPS}
    g = gm.graph
    for op in kernels.OPS:
        for node in list(g.nodes):
            if node.graph is g and op.match(g, node):
                counts[op.NAME] += 1
    drop_dead(g)
    g.lint()
    gm.recompile()
    return counts
