"""farm's fused Triton kernels, one op per file, each registered as a PyTorch custom op
(`torch.ops.farm.<name>`) with a fake implementation, so it runs eagerly and inside
`torch.compile(fullgraph=True)` graphs without a graph break.

Each file holds the `@triton.jit` kernel, its launcher, the PyTorch reference the tests and
benchmarks compare against, and the registration. Without Triton (or without CUDA and
without `TRITON_INTERPRET=1`) every op runs its reference.
"""

from . import adaln, gated_residual, gelu, glu, group_norm_silu, rmsnorm_rope
from ._runtime import HAVE_TRITON, backend

MODULES = (group_norm_silu, adaln, gated_residual, rmsnorm_rope, gelu, glu)
OPS = {m.NAME: getattr(m, m.NAME) for m in MODULES}

__all__ = ["HAVE_TRITON", "MODULES", "OPS", "backend"]
