"""engine/cpu_runtime.py: releasing a thread's OpenMP pool and fixing glibc's malloc thresholds really happen."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent("""
    import os, torch
    from engine.cpu_runtime import OpenMPPools, keep_freed_memory
    torch.set_num_threads(2)
    count = lambda: len(os.listdir("/proc/self/task"))
    before = count()
    torch.randn(512, 512) @ torch.randn(512, 512)  # starts this thread's OpenMP team (one extra worker)
    with_team = count()
    released = OpenMPPools().release()
    print(before, with_team, count(), released, keep_freed_memory())
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses glibc")
@pytest.mark.skipif((os.cpu_count() or 1) < 2, reason="one core: torch starts no OpenMP workers")
def test_release_frees_the_calling_threads_openmp_workers():
    out = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=120, check=True)
    before, with_team, after, released, kept = out.stdout.split()
    assert int(with_team) == int(before) + 1, "the matmul should have started one OpenMP worker"
    assert released == "True" and int(after) == int(before), "the worker should be gone after release()"
    assert kept == "True"
