"""A tensor-parallel server (--tp 2): serves, and when a rank dies it answers 503 and exits (no hang)."""
from __future__ import annotations

import os
import signal
import time

import httpx


def _tp_workers(parent_pid: int) -> list[int]:
    """Pids of the TP worker processes whose parent is `parent_pid` (the scheduler process)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        if ppid == parent_pid and b"engine.distributed.worker" in cmd:
            out.append(int(entry))
    return out


def test_dead_tp_rank_gives_503_and_the_server_exits(start_server):
    srv = start_server("--tp", "2", "--num-threads", "1", "--dtype", "float32")
    body = {"model": srv.model_name, "prompt": "hello", "max_tokens": 4, "temperature": 0}
    r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60.0)
    assert r.status_code == 200, r.text
    sched = srv.info()["pids"]["scheduler"]
    workers = _tp_workers(sched)
    assert len(workers) == 1, workers

    os.kill(workers[0], signal.SIGKILL)
    time.sleep(0.5)
    try:
        r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60.0)
        assert r.status_code == 503, r.text
    except httpx.TransportError:  # the server may already be gone by the time the request lands
        pass
    assert srv.wait_exit(30) == 1


def test_tp_size_the_model_cannot_split_exits_2_at_startup(tiny_model_dir):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    for tp, needle in (("3", "tp_size: 3 does not divide the model's 4 attention heads"),
                       ("8", "tp_size: 8 is larger than the model's 4 attention heads")):
        res = subprocess.run([sys.executable, "-m", "server", "--model", tiny_model_dir, "--tp", tp], cwd=repo,
                             capture_output=True, text=True, timeout=120)
        assert res.returncode == 2 and needle in res.stderr, res.stderr
