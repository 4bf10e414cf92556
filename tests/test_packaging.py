"""A non-editable install carries every file the C kernels compile from: each source under a csrc/ folder and
every header it includes must match the package-data globs in pyproject.toml (an installed wheel compiles them
on first use, far from the checkout). .ci/run also builds a wheel, installs it into a fresh venv outside the
checkout and generates with the C kernels on (.ci/wheel_smoke.py)."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def package_data_files() -> set[Path]:
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    files = set()
    for package, globs in cfg["tool"]["setuptools"]["package-data"].items():
        base = ROOT / package.replace(".", "/")
        for pattern in globs:
            files.update(p.resolve() for p in base.glob(pattern))
    return files


def test_every_c_source_and_included_header_ships():
    shipped = package_data_files()
    sources = sorted(ROOT.glob("engine/**/csrc/*.[ch]"))
    assert sources, "no C sources found: the test lost track of the kernels"
    for src in sources:
        assert src.resolve() in shipped, f"{src.relative_to(ROOT)} is not in pyproject's package-data"
        for header in re.findall(r'^#include "([^"]+)"', src.read_text(encoding="utf-8"), flags=re.M):
            inc = (src.parent / header).resolve()
            assert inc.exists() and inc in shipped, f"{src.name} includes {header}, which a wheel would not carry"
