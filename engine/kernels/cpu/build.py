"""Compile a C source of this package into a shared library for the host CPU, once, and cache it.

Used by the CPU kernels (engine/kernels/cpu/decode_attention.py: decode attention; engine/kernels/cpu/rmsnorm.py: RMSNorm).
The system C compiler (`$CC`, else `cc`) builds with CFLAGS for this CPU (`-march=native`) into `cache_dir`
(default `$XDG_CACHE_HOME/pairserve/kernels`, else `~/.cache/pairserve/kernels`), under a name hashed from the
source, flags, compiler version and CPU, so later processes load the library in milliseconds. Libraries link
libgomp, which in a torch process is torch's own: one OpenMP thread pool serves both.
"""
from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import tempfile
from pathlib import Path

CFLAGS = ("-O3", "-march=native", "-mprefer-vector-width=512", "-fopenmp", "-fno-math-errno",
          "-fno-trapping-math", "-ffp-contract=fast", "-shared", "-fPIC")


class KernelBuildError(RuntimeError):
    """The C compiler is missing or failed; the message carries its output."""


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pairserve" / "kernels"


def _cpu_signature() -> str:
    """What -march=native compiles for: the CPU model and its flags (a shared home dir may span machines)."""
    try:
        with open("/proc/cpuinfo") as f:
            lines = [ln for ln in f if ln.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


def build_library(source: Path, cache_dir: Path | None = None, defines: tuple[str, ...] = (),
                  march: str = "native") -> Path:
    """Compile `source` with CFLAGS and `-D` each of `defines` (once per source and the headers beside it, flags,
    compiler and CPU); return the shared library's path. Raises KernelBuildError.

    `march` replaces `-march=native`: a narrower target (e.g. "x86-64-v3": AVX2 + FMA, no AVX-512) builds the
    code paths of older CPUs on this one, which the tests use to run every path the host can execute."""
    cc = os.environ.get("CC", "cc")
    flags = tuple(f"-march={march}" if f == "-march=native" else f for f in CFLAGS) + tuple(f"-D{d}" for d in defines)
    try:
        version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise KernelBuildError(f"no working C compiler {cc!r} ({e}); set CC") from e
    source = Path(source)
    headers = sorted(source.parent.glob("*.h"))  # what `#include "x.h"` beside the source can pull in
    key = hashlib.sha256(b"\0".join([source.read_bytes(), *(h.read_bytes() for h in headers),
                                     " ".join(flags).encode(), version.encode(),
                                     _cpu_signature().encode()])).hexdigest()[:20]
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    lib = cache_dir / f"{source.stem}-{key}.so"
    if lib.exists():
        return lib
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=cache_dir)  # compile beside, then rename: racing builds are safe
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, "-o", tmp, str(source)], capture_output=True, text=True)
        if done.returncode != 0:
            raise KernelBuildError(f"{cc} failed to build {source.name}:\n{done.stderr.strip()}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib
