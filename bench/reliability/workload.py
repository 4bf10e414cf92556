"""Log-parsing ICL requests from the Loghub fixtures in tests/fixtures/loghub (12 systems × 40 lines), in the
InferLog stream order of each system, systems interleaved, cycled to any length."""
from __future__ import annotations

from pathlib import Path

from logparse import LOGHUB_SYSTEMS, build_stream, load_system, to_icl

FIXTURES = Path(__file__).resolve().parents[2] / "tests" / "fixtures" / "loghub"


def log_stream_icls(n: int, refine: str = "native", data_dir: Path = FIXTURES) -> list[dict]:
    streams = [[to_icl(q, refine=refine) for q in build_stream(load_system(str(data_dir), s))]
               for s in LOGHUB_SYSTEMS]
    out: list[dict] = []
    i = 0
    while len(out) < n:
        stream = streams[i % len(streams)]
        out.append(stream[(i // len(streams)) % len(stream)])
        i += 1
    return out
