"""A real `python -m server` process for the reliability checks: start on a free 127.0.0.1 port with a key file of
two tenants and an admin key, wait until healthy, read its processes' RSS, stop it. Every wait is bounded."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[2]
TENANT_KEYS = {"rel-key-a": "team-a", "rel-key-b": "team-b"}
ADMIN_KEY = "rel-admin-key"
START_TIMEOUT_S = 600.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bearer(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def pid_running(pid: int) -> bool:
    """False once `pid` is gone or a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


class ServerProc:
    def __init__(self, model: str, work_dir: Path, extra_flags: tuple[str, ...] = ()):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        key_file = work_dir / "keys.txt"
        key_file.write_text("".join(f"{k} {t}\n" for k, t in TENANT_KEYS.items()))
        self.log_path = work_dir / f"server-{self.port}.log"
        cmd = [sys.executable, "-m", "server", "--model", model, "--port", str(self.port), "--log-level", "warning",
               "--api-key-file", str(key_file), "--admin-api-key", ADMIN_KEY, *extra_flags]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                         env=dict(os.environ, PYTHONPATH=str(REPO)))
        self.pids: dict[str, int] = {}
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode} during startup:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/health", headers=bearer(ADMIN_KEY), timeout=2.0).status_code == 200:
                    self.pids = self.info()["pids"]
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        raise RuntimeError(f"server not healthy after {START_TIMEOUT_S} s")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def info(self) -> dict:
        r = httpx.get(f"{self.url}/get_server_info", headers=bearer(ADMIN_KEY), timeout=30.0)
        r.raise_for_status()
        return r.json()

    def rss(self) -> dict[str, int]:
        return {name: rss_bytes(pid) for name, pid in self.pids.items()}

    def wait_idle(self, timeout_s: float = 120.0) -> dict:
        deadline = time.monotonic() + timeout_s
        while True:
            info = self.info()
            if info["num_running"] == 0 and info["num_waiting"] == 0:
                return info
            if time.monotonic() > deadline:
                raise RuntimeError(f"server still busy after {timeout_s} s")
            time.sleep(0.2)

    def children_gone(self) -> bool:
        return not any(pid_running(pid) for name, pid in self.pids.items() if name != "server")

    def stop(self) -> int | None:
        """SIGTERM, then SIGKILL (and the children) if it lingers; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        for name, pid in self.pids.items():
            if name != "server" and pid_running(pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        return self.proc.returncode
