"""R4: faults on fresh servers. kill -9 of the scheduler process, then (another server) of the detokenizer: /health
must answer 503 within 5 s, the server must exit non-zero and leave no process behind. SIGTERM under load (a third
server): requests in flight finish normally, a request sent after the signal gets 503, exit status 0."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx

from bench.reliability.server_proc import ADMIN_KEY, TENANT_KEYS, ServerProc, bearer, pid_running

HEALTH_DEADLINE_S = 5.0
KEY = next(iter(TENANT_KEYS))



def orphans_after(pids: dict[str, int], wait_s: float = 10.0) -> list[str]:
    """The server's processes (name -> pid) still alive after up to `wait_s` seconds for them to go."""
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline and any(pid_running(p) for p in pids.values()):
        time.sleep(0.1)
    return [name for name, p in pids.items() if pid_running(p)]

def kill_child(model: str, work_dir: Path, child: str, flags: tuple[str, ...] = ()) -> dict:
    srv = ServerProc(model, work_dir, flags)
    try:
        pids = dict(srv.pids)
        os.kill(pids[child], signal.SIGKILL)
        killed_at = time.monotonic()
        health_503_after = None
        while time.monotonic() - killed_at < HEALTH_DEADLINE_S + 5:
            try:
                r = httpx.get(f"{srv.url}/health", headers=bearer(ADMIN_KEY), timeout=2.0)
                if r.status_code == 503:
                    health_503_after = time.monotonic() - killed_at
                    break
            except httpx.TransportError:
                break  # already gone: no 503 was seen in time
            time.sleep(0.05)
        try:
            rc = srv.proc.wait(timeout=60)
        except Exception:
            rc = None
        orphans = orphans_after(pids)
    finally:
        srv.stop()
    return {"health_503_after_s": None if health_503_after is None else round(health_503_after, 2),
            "exit_code": rc, "orphans": orphans,
            "ok": health_503_after is not None and health_503_after <= HEALTH_DEADLINE_S and rc not in (0, None)
            and not orphans}


def sigterm_under_load(model: str, work_dir: Path, flags: tuple[str, ...] = (), in_flight: int = 8,
                       max_tokens: int = 256) -> dict:
    """SIGTERM with `in_flight` streams running: they finish, a request sent after the signal gets 503.

    The streams are long (`max_tokens`, ignore_eos) so the drain outlasts the late request even on a fast model;
    a drain that ended first would leave the late request a refused connection, which proves nothing."""
    srv = ServerProc(model, work_dir, flags)
    results: list[tuple[int, str | None]] = []
    first_chunk = threading.Barrier(in_flight + 1)

    def stream() -> None:
        body = {"prompt": "Write a list of log levels:", "max_tokens": max_tokens, "ignore_eos": True,
                "stream": True, "temperature": 0}
        finish, status = None, 0
        try:
            with httpx.Client(base_url=srv.url, timeout=300.0) as c, \
                    c.stream("POST", "/v1/completions", json=body, headers=bearer(KEY)) as r:
                status = r.status_code
                seen = False
                for line in r.iter_lines():
                    if line.startswith("data: {"):
                        if not seen:
                            seen = True
                            first_chunk.wait(120)
                        if '"error"' in line:
                            finish = "error"
                        elif '"finish_reason":"' in line:
                            finish = line.split('"finish_reason":"')[1].split('"')[0]
        except (httpx.HTTPError, threading.BrokenBarrierError) as e:
            finish = f"{type(e).__name__}"
        results.append((status, finish))

    try:
        pids = dict(srv.pids)
        threads = [threading.Thread(target=stream) for _ in range(in_flight)]
        for t in threads:
            t.start()
        first_chunk.wait(300)  # every request is streaming
        srv.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        try:
            late = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "late", "max_tokens": 2},
                              headers=bearer(KEY), timeout=30.0).status_code
        except httpx.TransportError as e:
            late = f"transport error: {e}"
        for t in threads:
            t.join(300)
        rc = srv.proc.wait(timeout=120)
        orphans = orphans_after(pids)
    finally:
        srv.stop()
    finished = sum(1 for s, f in results if s == 200 and f == "length")
    return {"in_flight": in_flight, "finished_normally": finished, "late_request_status": late, "exit_code": rc,
            "orphans": orphans, "ok": finished == in_flight and late == 503 and rc == 0 and not orphans}


def run_faults(model: str, work_dir: Path, flags: tuple[str, ...] = ()) -> dict:
    out = {"kill_scheduler": kill_child(model, work_dir, "scheduler", flags),
           "kill_detokenizer": kill_child(model, work_dir, "detokenizer", flags),
           "sigterm_under_load": sigterm_under_load(model, work_dir, flags)}
    out["ok"] = all(v["ok"] for v in out.values())
    return out
