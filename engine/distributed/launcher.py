"""Rank 0's side of a tensor-parallel group: start ranks 1..N-1 as worker processes, watch them, stop them.

Workers are plain subprocesses (`python -m engine.distributed.worker`; the server's scheduler process is a
daemon and may not fork multiprocessing children) and get the ServerArgs as JSON on their command line. They
meet rank 0 through a torch.distributed FileStore in a fresh temp dir, so no port is picked ahead of time.
A worker exits when rank 0 tells it to stop, when a collective fails (rank 0 died) or when its parent is
gone; rank 0 raises TPGroupDead (comm.py) when it finds a worker dead.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import engine
from engine.distributed.comm import TPGroupDead

STOP_GRACE_S = 5.0


class TPWorkers:
    def __init__(self, args, model_path: str):
        self._dir = tempfile.mkdtemp(prefix="pairserve-tp-")
        self.init_method = "file://" + os.path.join(self._dir, "store")
        payload = json.dumps(dataclasses.asdict(args))
        env = dict(os.environ)  # workers import the very engine package rank 0 runs, wherever it was started
        root = os.path.dirname(os.path.dirname(os.path.abspath(engine.__file__)))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.procs = [
            subprocess.Popen([sys.executable, "-m", "engine.distributed.worker", "--rank", str(rank),
                              "--init-method", self.init_method, "--model-path", model_path,
                              "--parent-pid", str(os.getpid()), "--args-json", payload], env=env)
            for rank in range(1, args.tp_size)
        ]

    def dead(self) -> list[tuple[int, int]]:
        """(rank, exit code) of every worker that has exited."""
        return [(rank, p.returncode) for rank, p in enumerate(self.procs, start=1) if p.poll() is not None]

    def check_alive(self, wait_s: float = 0.0) -> None:
        """Raise TPGroupDead if a worker has exited (waiting up to wait_s for a dying one to be reaped)."""
        deadline = time.monotonic() + wait_s
        while True:
            dead = self.dead()
            if dead or time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        if dead:
            desc = ", ".join(f"rank {r} (exit code {c})" for r, c in dead)
            raise TPGroupDead(f"tensor-parallel group broken: {desc} exited")

    def stop(self) -> None:
        """Wait for workers told to stop; kill the ones that do not exit in time. Idempotent."""
        deadline = time.monotonic() + STOP_GRACE_S
        for p in self.procs:
            try:
                p.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        shutil.rmtree(self._dir, ignore_errors=True)
