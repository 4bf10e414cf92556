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
