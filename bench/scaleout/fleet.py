"""Start and stop what bench.scaleout measures: N pairserve replicas and the real sglang-router, on loopback.

Every process binds 127.0.0.1 on a free port and logs to a file under the run's log dir; every wait is bounded.
Replicas stay up across routing policies (each policy gets a fresh router and flushed caches).
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

START_TIMEOUT_S = 300.0  # N model loads on a shared 2-core machine
STOP_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _repo_env() -> dict[str, str]:
    """Children import the same packages as this process, wherever it was started from."""
    import engine

    root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    return env


@dataclass
class Proc:
    name: str
    proc: subprocess.Popen
    url: str
    log_path: Path

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(STOP_TIMEOUT_S)


def _spawn(name: str, cmd: list[str], url: str, log_dir: Path) -> Proc:
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_repo_env())
    return Proc(name, proc, url, log_path)


def _wait(pred, what: str, procs: list[Proc], timeout_s: float = START_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        for p in procs:
            if p.proc.poll() is not None:
                raise RuntimeError(f"{p.name} exited with {p.proc.returncode} while waiting for {what}:\n{p.log_tail()}")
        try:
            if pred():
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.3)


def start_replicas(n: int, model_path: str, server_flags: list[str], log_dir: Path) -> list[Proc]:
    """n `python -m server` processes, healthy on return (stopped again if any fails to start)."""
    procs: list[Proc] = []
    try:
        for i in range(n):
            port = free_port()
            cmd = [sys.executable, "-m", "server", "--model", model_path, "--host", "127.0.0.1", "--port", str(port),
                   "--log-level", "warning", *server_flags]
            procs.append(_spawn(f"replica{i}", cmd, f"http://127.0.0.1:{port}", log_dir))
        for p in procs:
            _wait(lambda: httpx.get(f"{p.url}/health", timeout=2.0).status_code == 200, f"{p.name} /health", procs)
    except BaseException:
        for p in procs:
            p.stop()
        raise
    return procs


def start_router(worker_urls: list[str], policy: str, log_dir: Path) -> Proc:
    """sglang-router (`python -m sglang_router.launch_router`) over the workers; on return it has registered all
    of them (its /workers lists each) and routes a request."""
    port = free_port()
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls, "--policy", policy,
           "--host", "127.0.0.1", "--port", str(port), "--prometheus-host", "127.0.0.1",
           "--prometheus-port", str(free_port()), "--log-level", "warn"]
    router = _spawn(f"router-{policy}", cmd, f"http://127.0.0.1:{port}", log_dir)
    try:
        _wait(lambda: _registered(router.url) >= len(worker_urls), "the router to register every worker", [router],
              120.0)
    except BaseException:
        router.stop()
        raise
    return router


def _registered(router_url: str) -> int:
    r = httpx.get(f"{router_url}/workers", timeout=5.0)
    if r.status_code != 200:
        return 0
    body = r.json()
    workers = body.get("workers", body) if isinstance(body, dict) else body
    return len(workers) if isinstance(workers, list) else 0
