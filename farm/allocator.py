"""The host allocator, set for tensors on the CPU: glibc keeps large freed buffers for the next
request instead of unmapping them, and gives free memory back when a model is unloaded.

glibc's malloc serves a request above its mmap threshold (which it raises by itself, to 32 MiB
at most) with a fresh mapping, and unmaps it at free. A model drawing on the CPU whose
activations are larger, a video VAE's `conv3d` at farm's sizes, then has every page of them
faulted in again at each layer: one `farm render` of the Wan twin took 3.5 million minor page
faults and about 9 s of system time in 28 s (docs/benchmarks.md). `mallopt` cannot raise the
threshold past 32 MiB, so `keep_freed` turns the mappings off instead (`M_MMAP_MAX = 0`: large
requests come from the heap, which glibc reuses) and lets up to 1 GiB of free memory stay at the
heap's top (`M_TRIM_THRESHOLD`). The cost is memory held between calls: `give_back` returns it
(`malloc_trim`), and the runner calls it when it unloads a model.

Linux with glibc only; elsewhere (macOS, musl) both do nothing and return False.
"""

from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's malloc.h
KEEP = 1 << 30  # free memory left at the heap's top before glibc returns it

_libc: ctypes.CDLL | None | bool = False  # False: not looked up yet


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is False:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)  # this process's own C library
                libc.gnu_get_libc_version  # noqa: B018 (glibc's; musl has no mallopt options)
                _libc = libc
            except (OSError, AttributeError):
                pass
    return _libc


def keep_freed() -> bool:
    """Keep this process's large freed buffers for reuse (see above); True once glibc took it."""
    libc = _glibc()
    return bool(libc) and libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, KEEP) == 1


def give_back() -> bool:
    """Return the free memory of this process's heaps to the system; True if any was."""
    libc = _glibc()
    return bool(libc) and libc.malloc_trim(0) == 1
