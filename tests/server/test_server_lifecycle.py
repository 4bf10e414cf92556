"""Process lifecycle: CLI validation, a dying scheduler (503 + exit non-zero), SIGTERM with requests in flight
(they finish within the drain, new ones get 503; past the drain they fail with 503)."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
LONG = {"prompt": "a long generation", "max_tokens": 1000, "ignore_eos": True}


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "server", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO)))


@pytest.mark.parametrize("args,needle", [
    (("--tp-size", "0"), "tp_size"),
    (("--schedule-policy", "random"), "schedule_policy"),
    (("--port", "0"), "port"),
    (("--max-running-requests", "many"), "--max-running-requests"),
    (("--model", "/nonexistent/model/dir"), "model"),
])
def test_bad_flags_exit_2_naming_the_field(args, needle):
    res = _run_cli(*args)
    assert res.returncode == 2, res.stderr
    assert needle in res.stderr


def test_every_server_arg_is_a_flag():
    res = _run_cli("--help")
    assert res.returncode == 0
    from engine.config import ServerArgs
    import dataclasses

    for f in dataclasses.fields(ServerArgs):
        if f.name != "extra":
            assert "--" + f.name.replace("_", "-") in res.stdout, f.name
    assert "--model" in res.stdout


def _read_stream(resp: httpx.Response, first_read: threading.Event, frames: list[str]) -> None:
    for line in resp.iter_lines():
        if line.startswith("data: "):
            frames.append(line[len("data: "):])
            first_read.set()


def _open_stream(srv, frames: list[str]):
    """Start a long streaming request; returns (client, response, reader thread) once its first chunk arrived."""
    client = srv.client()
    req = client.build_request("POST", "/v1/completions", json={**LONG, "stream": True})
    resp = client.send(req, stream=True)
    assert resp.status_code == 200
    first = threading.Event()
    reader = threading.Thread(target=_read_stream, args=(resp, first, frames), daemon=True)
    reader.start()
    assert first.wait(30), "no first chunk"
    return client, resp, reader


def test_scheduler_death_fails_requests_with_503_and_exits(start_server):
    srv = start_server()
    pids = srv.info()["pids"]
    frames: list[str] = []
    client, resp, reader = _open_stream(srv, frames)
    result: dict = {}
    blocking = threading.Thread(target=lambda: result.update(r=httpx.post(f"{srv.url}/v1/completions", json=LONG,
                                                                          timeout=60.0)), daemon=True)
    blocking.start()
    deadline = time.monotonic() + 30
    while srv.info()["num_running"] < 2:
        assert time.monotonic() < deadline, "the second request never started running"
        time.sleep(0.05)

    os.kill(pids["scheduler"], signal.SIGKILL)

    blocking.join(30)
    reader.join(30)
    assert not blocking.is_alive() and not reader.is_alive()
    assert result["r"].status_code == 503 and "scheduler" in result["r"].json()["error"]["message"]
    errors = [json.loads(f)["error"] for f in frames if f.startswith("{") and "error" in json.loads(f)]
    assert errors and errors[0]["code"] == 503
    assert srv.wait_exit(15) == 1
    srv.wait_pids_gone([pids["detokenizer"], pids["scheduler"]])
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{srv.url}/health", timeout=2.0)
    resp.close()
    client.close()


def test_sigterm_aborts_in_flight_past_the_drain_and_exits_cleanly(start_server):
    srv = start_server("--shutdown-drain-seconds", "1")
    pids = srv.info()["pids"]
    frames: list[str] = []
    client, resp, reader = _open_stream(srv, frames)

    srv.proc.send_signal(signal.SIGTERM)

    reader.join(30)
    assert not reader.is_alive(), "the stream did not end after SIGTERM"
    errors = [json.loads(f)["error"] for f in frames if f.startswith("{") and "error" in json.loads(f)]
    assert errors and errors[0]["code"] == 503
    assert srv.wait_exit(15) == 0
    srv.wait_pids_gone([pids["scheduler"], pids["detokenizer"]])
    resp.close()
    client.close()


def test_model_that_fails_to_load_exits_1_with_the_reason(tiny_model_dir, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    for f in os.listdir(tiny_model_dir):
        if not f.endswith(".safetensors"):
            (broken / f).write_bytes((Path(tiny_model_dir) / f).read_bytes())
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    res = _run_cli("--model", str(broken), "--port", "1", "--log-level", "warning")
    assert res.returncode == 1
    assert "scheduler failed to start" in res.stderr


def test_sigterm_lets_in_flight_requests_finish_and_refuses_new_ones(start_server):
    srv = start_server()
    pids = srv.info()["pids"]
    # long enough that the drain outlasts the late request below (a drain already over leaves it no server at all)
    body = {"prompt": "count on", "max_tokens": 256, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}
    started, usages, errors = threading.Barrier(4), [], []

    def run() -> None:
        with srv.client() as c, c.stream("POST", "/v1/completions", json=body) as r:
            lines = r.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            started.wait(30)
            for line in lines:
                obj = json.loads(line[6:]) if line.startswith("data: {") else {}
                if obj.get("usage"):
                    usages.append(obj["usage"]["completion_tokens"])
                if "error" in obj:
                    errors.append(obj["error"])

    threads = [threading.Thread(target=run) for _ in range(3)]
    for t in threads:
        t.start()
    started.wait(60)  # all three are streaming
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    late = httpx.post(f"{srv.url}/v1/completions", json={"prompt": "late", "max_tokens": 2}, timeout=10)
    assert late.status_code == 503 and late.json()["error"]["code"] == 503
    assert httpx.get(f"{srv.url}/health", timeout=10).status_code == 503
    for t in threads:
        t.join(60)
    assert not errors and usages == [256, 256, 256]
    assert srv.wait_exit(20) == 0
    srv.wait_pids_gone([pids["scheduler"], pids["detokenizer"]])
