"""farm's fused Triton kernels, one op per file, each registered as a PyTorch custom op
(`torch.ops.farm.<name>`) with a fake implementation, so it runs eagerly and inside
`torch.compile(fullgraph=True)` graphs without a graph break.

Each file holds the `@triton.jit` kernel, its launcher, the PyTorch reference the tests and
benchmarks compare against, the registration, and `match(graph, node)`: the pattern of a
Dynamo FX graph that the op replaces (`farm.acceleration.rewrite` runs the matchers; their
shared helpers are in `_fx.py`). Without Triton (or without CUDA and without
`TRITON_INTERPRET=1`) every op runs its reference.

`OPS` is the one list of ops: the order in which the rewrite tries their patterns (glu
before gelu: GEGLU's GELU is part of its pattern) and in which reports list them.

Registered with `torch.library.custom_op` + `register_fake`, not `triton_op`: `triton_op`
lets Inductor see into the kernel, but AOTAutograd then runs the kernel on functional
tensors while tracing, which under `TRITON_INTERPRET=1` reads fake storage and fails
("Attempted to access the data pointer on an invalid python storage", torch 2.13 with
Triton 3.9), so no CPU machine could check that the ops trace. Inductor calls a custom op as
an opaque kernel between the ones it generates.
"""

from . import adaln, gated_residual, gelu, glu, group_norm_silu, rmsnorm_rope
from ._runtime import HAVE_TRITON, backend

OPS = (group_norm_silu, adaln, gated_residual, rmsnorm_rope, glu, gelu)

__all__ = ["HAVE_TRITON", "OPS", "backend"]
