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


_THP_CHILD = textwrap.dedent("""
    import os
    import engine, torch
    t = torch.empty(64 << 20, dtype=torch.uint8)
    t.fill_(1)  # touch every page
    huge = next(int(l.split()[1]) for l in open("/proc/self/smaps_rollup") if l.startswith("AnonHugePages"))
    print(os.environ["THP_MEM_ALLOC_ENABLE"], huge)
""")


def _thp_mode() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return "never"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("setting", [None, "0"])
def test_importing_the_engine_puts_large_tensors_on_huge_pages_unless_told_not_to(setting):
    env = {k: v for k, v in os.environ.items() if k != "THP_MEM_ALLOC_ENABLE"}
    if setting is not None:
        env["THP_MEM_ALLOC_ENABLE"] = setting
    out = subprocess.run([sys.executable, "-c", _THP_CHILD], capture_output=True, text=True, timeout=120, check=True,
                         env=env)
    value, huge_kb = out.stdout.split()
    assert value == ("1" if setting is None else setting)
    if setting == "0" and _thp_mode() != "always":
        assert int(huge_kb) == 0  # nothing asked for huge pages
    if setting is None and _thp_mode() in ("always", "madvise"):
        assert int(huge_kb) >= 2048, "torch should have madvised the 64 MB tensor onto huge pages"
