"""Real `python -m server` subprocesses on 127.0.0.1 (free ports) serving the tiny checkpoint.

Fixtures:
- `server`: one shared server for the session, with API key `API_KEY`; its teardown sends SIGTERM and checks
  the graceful exit (status 0, scheduler and detokenizer gone).
- `start_server(*flags, api_key=None)`: a private server for tests that kill or stop it; stopped at teardown.
Helpers reach tests as methods of the returned `ServerHandle` (this file is not importable by module name).
Every wait is bounded, so a broken server fails a test instead of hanging the session.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
API_KEY = "test-key"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 20.0
KV_CACHE_TOKENS = 2048  # small on purpose: a 3000-token prompt fits the context (4096) but not the pool


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(pred, timeout_s: float, what: str, interval_s: float = 0.1):
    deadline = time.monotonic() + timeout_s
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(interval_s)


class ServerHandle:
    def __init__(self, proc: subprocess.Popen, port: int, api_key: str | None, log_path: Path, model_name: str):
        self.proc = proc
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.api_key = api_key
        self.log_path = log_path
        self.model_name = model_name

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]

    def client(self, **kw) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers, timeout=kw.pop("timeout", 60.0), **kw)

    def info(self) -> dict:
        r = httpx.get(f"{self.url}/get_server_info", headers=self.headers, timeout=10.0)
        assert r.status_code == 200, r.text
        return r.json()

    def wait_ready(self) -> None:
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited with {self.proc.returncode} during startup:\n{self.log()}")
            try:
                return httpx.get(f"{self.url}/health", timeout=2.0).status_code == 200
            except httpx.TransportError:
                return False

        _wait(ready, START_TIMEOUT_S, "the server to become healthy", 0.2)

    def wait_idle(self, timeout_s: float = 30.0) -> dict:
        """Stats once nothing runs or waits (aborted requests take a scheduler step to leave)."""
        def idle():
            info = self.info()
            return info if info["num_running"] == 0 and info["num_waiting"] == 0 else None

        return _wait(idle, timeout_s, "the scheduler to drain")

    def wait_exit(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not exit within {timeout_s} s:\n{self.log()}") from None

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL if it lingers; the exit status (None if it had to be killed)."""
        if self.proc.poll() is not None:
            return self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    @staticmethod
    def pid_gone(pid: int) -> bool:
        """True once `pid` no longer runs (absent, or a zombie waiting to be reaped)."""
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    def wait_pids_gone(self, pids, timeout_s: float = 10.0) -> None:
        _wait(lambda: all(self.pid_gone(p) for p in pids), timeout_s, f"processes {list(pids)} to exit")


def _launch(model_dir: str, log_dir: Path, flags: tuple[str, ...], api_key: str | None) -> ServerHandle:
    port = _free_port()
    cmd = [sys.executable, "-m", "server", "--model", model_dir, "--port", str(port),
           "--kv-cache-tokens", str(KV_CACHE_TOKENS), "--log-level", "warning", *flags]
    if api_key:
        cmd += ["--api-key", api_key]
    env = dict(os.environ, PYTHONPATH=str(REPO))
    log_path = log_dir / f"server-{port}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    handle = ServerHandle(proc, port, api_key, log_path, os.path.basename(model_dir.rstrip("/")))
    try:
        handle.wait_ready()
    except BaseException:
        handle.stop()
        raise
    return handle


@pytest.fixture(scope="session")
def server(tiny_model_dir, tmp_path_factory):
    handle = _launch(tiny_model_dir, tmp_path_factory.mktemp("server-logs"), (), API_KEY)
    pids = list(handle.info()["pids"].values())
    yield handle
    rc = handle.stop()
    assert rc == 0, f"shared server exited with {rc} on SIGTERM:\n{handle.log()}"
    handle.wait_pids_gone(pids)


@pytest.fixture
def start_server(tiny_model_dir, tmp_path):
    handles: list[ServerHandle] = []

    def start(*flags: str, api_key: str | None = None) -> ServerHandle:
        handles.append(_launch(tiny_model_dir, tmp_path, flags, api_key))
        return handles[-1]

    yield start
    for h in handles:
        h.stop()


@pytest.fixture(scope="module")
def start_module_server(tiny_model_dir, tmp_path_factory):
    """`start_server` for servers a whole test module shares; stopped when the module is done."""
    handles: list[ServerHandle] = []

    def start(*flags: str, api_key: str | None = None) -> ServerHandle:
        handles.append(_launch(tiny_model_dir, tmp_path_factory.mktemp("module-server"), flags, api_key))
        return handles[-1]

    yield start
    for h in handles:
        h.stop()
