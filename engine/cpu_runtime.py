"""Process-level CPU runtime settings the engine needs to run at full speed on a few cores.

`OpenMPPools.release()`: torch's CPU kernels run on an OpenMP (libgomp) thread team that belongs to the calling
OS thread, and libgomp keeps that team alive until its thread exits. Once a process holds more OpenMP threads
than cores, libgomp stops spin-waiting between parallel regions, and every op pays a futex wake-up. Measured on
the 2-core dev VM: a bf16 [8 x 512] @ [512 x 2816] linear took 92 us with one team and 166 us with a second
(idle) team alive in another thread; engine decode steps ran ~2x slower. The engine does all model work on
one thread, and callers release the team their own earlier torch work left behind (`omp_pause_resource_all`,
OpenMP 5.0, frees the calling thread's pool in libgomp).

`keep_freed_memory()`: glibc serves blocks over its mmap threshold with fresh mappings and trims freed heap tops,
so the few-MB temporaries every layer allocates and frees (gathered K/V, MLP activations) can pay page faults
and zeroing again each step. Fixing both thresholds keeps freed memory in the process for the next step (what
an LD_PRELOAD'ed tcmalloc or jemalloc gives vLLM's CPU backend): peak RSS becomes resident RSS.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # glibc malloc.h parameter numbers
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's ceiling for this parameter on 64-bit (HEAP_MAX_SIZE / 2)
TRIM_THRESHOLD_BYTES = 1 << 30  # effectively never trim between steps
_OMP_PAUSE_SOFT = 1


class OpenMPPools:
    """Releases the calling thread's OpenMP thread pools: `omp_pause_resource_all` of every libgomp loaded when
    this object was built (torch bundles one; other wheels such as sentencepiece bring their own copies, each
    with its own pools). Building reads /proc/self/maps (~0.5 ms); `release()` is a few C calls."""

    def __init__(self):
        import torch  # noqa: F401  (loads torch's libgomp, so the maps lookup finds it)

        self._pause = []
        if not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps") as f:
                paths = sorted({line.split()[-1] for line in f if "libgomp" in line and "/" in line})
        except OSError:
            return
        for path in paths:
            try:
                fn = ctypes.CDLL(path).omp_pause_resource_all
            except (OSError, AttributeError):
                continue
            fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
            self._pause.append(fn)

    def release(self) -> bool:
        """Free this thread's pools, if any (its next parallel op makes new ones); False without libgomp."""
        results = [pause(_OMP_PAUSE_SOFT) == 0 for pause in self._pause]
        return bool(results) and all(results)


def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds (process-wide, idempotent); False where libc is not glibc."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other libcs have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(_M_TRIM_THRESHOLD,
                                                                           TRIM_THRESHOLD_BYTES) == 1
    if not ok:
        logger.warning("mallopt refused the CPU allocator settings; step temporaries may page-fault each step")
    return ok
