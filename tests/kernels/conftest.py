"""Kernel tests run under Triton's interpreter on the CPU, so they need no GPU. The variable
is read by `triton.jit` when a kernel is defined, hence here, before `kernels` is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
