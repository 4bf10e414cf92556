"""bench.model_speed.int8_gemv_speed / int4_gemv_speed / f32_gemv_speed run end to end on one layer or tiny shapes
(the timing itself is the benchmark's business; this checks they run and report every row asked for)."""
import json
import os
import shutil

import pytest

pytestmark = pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler")


def test_int8_gemv_speed_writes_a_row_per_shape_and_row_count(tmp_path):
    from bench.model_speed.int8_gemv_speed import SHAPES, main

    out = tmp_path / "gemv.json"
    main(["--layers", "1", "--rows", "1,3", "--repeats", "1", "--output-file", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["shape"], r["rows"]) for r in rows] == [(s, m) for s in SHAPES for m in (1, 3)]
    for r in rows:
        assert r["weight_bytes"] == sum(n * k for n, k in SHAPES[r["shape"]])
        assert r["torch_ms"] > 0 and r["compiled_ms"] > 0
        assert r["speedup"] == pytest.approx(r["torch_ms"] / r["compiled_ms"])


def test_int4_gemv_speed_prints_a_row_per_model_and_row_count(capsys):
    from bench.model_speed.int4_gemv_speed import main
    from engine.kernels.cpu.int4_gemv import torch_int4pack_layout

    if torch_int4pack_layout() is None:
        pytest.skip("torch's int4 layout unknown here")
    main(["--models", "0.5B", "--layers", "1", "--rows", "1,2", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 0.5B |")]
    assert [line.split("|")[2].strip() for line in rows] == ["1", "2"]


def test_f32_gemv_speed_writes_a_row_per_shape_and_row_count(tmp_path):
    from bench.model_speed.f32_gemv_speed import CALLS, main, parse_shapes

    out = tmp_path / "gemv.json"
    main(["--shapes", "300x40,97x13", "--rows", "1,3", "--repeats", "2", "--output-file", str(out)])
    rows = json.loads(out.read_text())["results"]
    assert [(r["shape"], r["n"], r["k"], r["rows"]) for r in rows] == [
        ("300x40", 300, 40, 1), ("300x40", 300, 40, 3), ("97x13", 97, 13, 1), ("97x13", 97, 13, 3)]
    for r in rows:
        assert r["weight_bytes"] == 4 * r["n"] * r["k"]
        assert all(r[f"{c}_ms"] > 0 for c in CALLS)
        assert r["ours_gb_s"] == pytest.approx(r["weight_bytes"] / r["ours_ms"] / 1e6)
        assert r["vs_packed"] == pytest.approx(r["packed_ms"] / r["ours_ms"])
        assert r["vs_mkl"] == pytest.approx(r["mkl_ms"] / r["ours_ms"])
        assert r["max_rel_err"] < 1e-5
    assert parse_shapes("0.5B,64x8") == [("0.5B", 151936, 896), ("64x8", 64, 8)]
    with pytest.raises(ValueError, match="--shapes"):
        parse_shapes("64x0")
