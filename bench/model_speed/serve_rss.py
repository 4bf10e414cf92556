"""Peak memory of a whole server (all its processes) from launch through one chat request.

    python -m bench.model_speed.serve_rss [--max-tokens 8] [--timeout 1200] [--output-file OUT.json] -- \\
        --model DIR --load-format dummy --quantization int4 --kv-cache-tokens 4096

Starts `python -m server` with the flags after `--` on a free 127.0.0.1 port, samples the summed RSS of the
server and its children every 0.2 s, waits for /health, sends one /v1/chat/completions request, then stops the
server. Reports the sampled peak of the sum, each process's own peak (VmHWM, read just before it is stopped:
their sum bounds the true peak from above), seconds to ready and the answer.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry))
    return out


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo.extend(_children(p))
    return pids


def _status_kib(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--max-tokens", type=int, default=8)
    ap.add_argument("--timeout", type=float, default=1200.0)
    ap.add_argument("--output-file", default=None)
    a = ap.parse_args(argv[:split])
    port = _free_port()
    cmd = [sys.executable, "-m", "server", *argv[split + 1:], "--port", str(port)]
    start = time.perf_counter()
    proc = subprocess.Popen(cmd)
    peak = {"sum_kib": 0}
    hwm: dict[int, int] = {}
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            pids = _tree(proc.pid)
            peak["sum_kib"] = max(peak["sum_kib"], sum(_status_kib(p, "VmRSS") for p in pids))
            for p in pids:
                hwm[p] = max(hwm.get(p, 0), _status_kib(p, "VmHWM"))
            time.sleep(0.2)

    threading.Thread(target=sample, daemon=True).start()
    result: dict = {"command": " ".join(cmd)}
    try:
        url = f"http://127.0.0.1:{port}"
        while time.perf_counter() - start < a.timeout:
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode} before it was ready")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        result["ready_seconds"] = time.perf_counter() - start
        t = time.perf_counter()
        served = httpx.get(url + "/v1/models", timeout=10).json()["data"][0]["id"]
        body = {"model": served, "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": a.max_tokens, "temperature": 0}
        r = httpx.post(url + "/v1/chat/completions", json=body, timeout=a.timeout)
        result["status_code"] = r.status_code
        result["answer"] = r.json()
        result["request_seconds"] = time.perf_counter() - t
    finally:
        time.sleep(0.5)
        stop.set()
        result["peak_rss_bytes"] = peak["sum_kib"] * 1024
        result["sum_of_process_peaks_bytes"] = sum(hwm.values()) * 1024
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    print(json.dumps(result, indent=2))
    if a.output_file:
        with open(a.output_file, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
