"""bench.reliability end to end on the tiny model, every R line small (few requests, ops and examples), against
real server processes: each figure is green, carries its fields, and the JSON holds exactly R1..R5 (+ meta)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_reliability_suite_small(tiny_model_dir, tmp_path):
    out = tmp_path / "rel.json"
    cmd = [sys.executable, "-m", "bench.reliability", "--model", tiny_model_dir, "--output-file", str(out),
           "--soak-requests", "30", "--soak-concurrency", "8", "--soak-max-tokens", "4", "--fuzz-ops", "4000",
           "--schemathesis-examples", "2", "--server-flags", "--kv-cache-tokens 4096"]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1500,
                         env=dict(os.environ, PYTHONPATH=str(REPO)))
    data = json.loads(out.read_text())
    assert set(data) == {"R1", "R2", "R3", "R4", "R5", "meta"}, res.stderr
    for name in ("R1", "R2", "R3", "R4", "R5"):
        assert data[name]["ok"] is True, (name, data[name])
    assert res.returncode == 0, res.stderr
    assert data["R1"]["leaked_slots"] == 0 and data["R1"]["counts"]["checks"] >= 4
    r2 = data["R2"]
    assert r2["lost"] == 0 and r2["kv_free_or_cached"] and r2["kv_locked_tokens"] == 0
    assert r2["completed"] + r2["abandoned_by_client"] == 30 and r2["abandoned_by_client"] >= 1
    r3 = data["R3"]
    assert r3["hand_list"]["cases"] >= 40 and r3["hand_list"]["server_errors"] == 0
    assert r3["schemathesis"]["exit_code"] == 0
    r4 = data["R4"]
    assert r4["kill_scheduler"]["health_503_after_s"] <= 5 and r4["kill_detokenizer"]["exit_code"] != 0
    assert r4["sigterm_under_load"]["late_request_status"] == 503
    r5 = data["R5"]
    assert not r5["mismatches"] and r5["cross_tenant"]["examples_from_a_in_b"] == 0
