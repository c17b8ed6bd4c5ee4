"""farm/allocator.py: a CPU runner's process reuses large freed buffers instead of faulting
them in again, and gives the memory back when asked. Each case runs in a fresh process: the
allocator's settings are the whole process's."""

import json
import subprocess
import sys

import pytest

from farm import allocator

pytestmark = pytest.mark.skipif(allocator._glibc() is None, reason="glibc's malloc only (Linux)")

# Allocates, fills and frees 64 MiB twice (over glibc's largest mmap threshold, 32 MiB), after
# `setup`, and reports the second pass's minor page faults and the resident memory after the
# free, then after `allocator.give_back()`.
PROBE = """
import ctypes, json, resource, sys
{setup}
from farm import allocator
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
SIZE = 64 << 20
def faults(): return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def rss(): return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()
def once():
    p = libc.malloc(SIZE)
    ctypes.memset(p, 1, SIZE)
    libc.free(p)
once()
before = faults()
once()
faulted = faults() - before
held = rss()
gave = allocator.give_back()
print(json.dumps({{"faulted": faulted, "held": held, "after": rss(), "gave": gave}}))
"""
PAGES = (64 << 20) // 4096


def probe(setup: str) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.splitlines()[-1])


def test_by_default_glibc_faults_a_large_buffer_in_again():
    r = probe("")
    assert r["faulted"] >= PAGES * 0.9  # every page, every time: what a VAE's conv3d paid per layer


def test_a_cpu_runner_keeps_large_freed_buffers_and_gives_them_back_on_unload(tmp_path):
    r = probe(f"from farm.queue.cache import Cache\nfrom farm.run.runner import Runner\n"
              f"Runner(Cache({str(tmp_path)!r}), device='cpu')")
    assert r["faulted"] < PAGES * 0.05  # the same pages again, no new mapping
    assert r["gave"] and r["held"] - r["after"] >= (64 << 20) * 0.9  # kept until given back


def test_a_gpu_runner_leaves_the_allocator_as_it_is(tmp_path):
    r = probe(f"from farm.queue.cache import Cache\nfrom farm.run.runner import Runner\n"
              f"Runner(Cache({str(tmp_path)!r}), device='cuda:0')")
    assert r["faulted"] >= PAGES * 0.9
