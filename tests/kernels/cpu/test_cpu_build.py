"""engine/kernels/cpu/build.py: one compile per source / flags / compiler / CPU, cached; clear errors when it cannot."""
import os
import shutil

import pytest

from engine.kernels.cpu.decode_attention import SOURCE
from engine.kernels.cpu.build import KernelBuildError, build_library

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


def test_build_is_cached_per_source_and_defines(tmp_path):
    first = build_library(SOURCE, tmp_path, ("DA_GENERIC",))
    stamp = first.stat().st_mtime_ns
    assert build_library(SOURCE, tmp_path, ("DA_GENERIC",)) == first and first.stat().st_mtime_ns == stamp
    assert first.name.startswith("decode_attention-")
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary left behind
    assert build_library(SOURCE, tmp_path) != first  # other flags, another library


def test_build_fails_clearly(tmp_path, monkeypatch):
    broken = tmp_path / "broken.c"
    broken.write_text("int f(void) { return }\n")
    with pytest.raises(KernelBuildError, match="failed to build broken.c"):
        build_library(broken, tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())
    monkeypatch.setenv("CC", "false")  # runs, but is no compiler
    with pytest.raises(KernelBuildError, match="no working C compiler 'false'"):
        build_library(SOURCE, tmp_path / "out")


def test_a_header_beside_the_source_is_part_of_the_cache_key(tmp_path):
    src, header = tmp_path / "k.c", tmp_path / "k_part.h"
    src.write_text('#include "k_part.h"\nint f(void) { return PART; }\n')
    header.write_text("#define PART 1\n")
    first = build_library(src, tmp_path / "out")
    header.write_text("#define PART 2\n")  # an edited header must not load the stale library
    second = build_library(src, tmp_path / "out")
    assert second != first
    import ctypes

    assert ctypes.CDLL(str(first)).f() == 1 and ctypes.CDLL(str(second)).f() == 2
