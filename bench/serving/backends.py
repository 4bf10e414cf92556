"""HTTP backends of `python -m bench.serving` (pairserve, any OpenAI-compatible server) and pairserve's launcher.

One request = one streaming call, timed on the client (bench/serving/metrics.py has the definitions):
- random / gsp prompts → POST /v1/completions with the prompt as token ids (text for `--random-kind words`);
- loghub ICL prompts → on pairserve, POST /generate with the `icl` object (the native route is the one whose ICL
  requests go through PAIR refinement under the server's --pair-policy); on other servers, POST
  /v1/chat/completions with the four rendered chat messages.
Every call is greedy, asks for `output_len` tokens, sets `ignore_eos` unless told not to (OpenAI's own API
rejects it), and asks for usage in the stream (`stream_options.include_usage`), from which prompt, completion
and cached token counts are taken; a server that omits usage leaves the dataset's lengths in place.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.serving.data import BenchRequest
from bench.serving.metrics import RequestResult

REPO = Path(__file__).resolve().parents[1]
LAUNCH_TIMEOUT_S = 600.0
STOP_TIMEOUT_S = 30.0
# pairserve server flags per PAIR variant (bench.compare --variants; bench.serving --variant).
VARIANT_FLAGS = {
    "none": ["--disable-radix-cache", "--pair-policy", "none"],
    "radix": ["--pair-policy", "none"],
    "nomix": ["--pair-policy", "none", "--no-enable-mixed-chunk"],  # radix, prefill steps without decode tokens
    "table": ["--pair-policy", "table"],
    "native": ["--pair-policy", "native"],
}


@dataclass
class HttpTarget:
    """Where and how to send requests. `native_icl`: the server is pairserve (ICL goes to /generate)."""

    base_url: str
    model: str | None
    native_icl: bool
    api_key: str | None = None
    ignore_eos: bool = True

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}


def build_call(target: HttpTarget, req: BenchRequest, output_len: int | None = None) -> tuple[str, str, dict]:
    """(kind, path, JSON body) of one request; kind is 'completions', 'chat' or 'native'."""
    n = req.output_len if output_len is None else output_len
    if req.icl is not None and target.native_icl:
        sp = {"max_new_tokens": n, "temperature": 0.0}
        if target.ignore_eos:
            sp["ignore_eos"] = True
        return "native", "/generate", {"icl": req.icl, "sampling_params": sp, "stream": True}
    body: dict = {"max_tokens": n, "temperature": 0.0, "stream": True, "stream_options": {"include_usage": True}}
    if target.model:
        body["model"] = target.model
    if target.ignore_eos:
        body["ignore_eos"] = True
    if req.icl is not None:
        return "chat", "/v1/chat/completions", {**body, "messages": req.messages}
    return "completions", "/v1/completions", {**body, "prompt": req.text if req.text is not None else req.input_ids}


def _chunk_text_and_usage(kind: str, obj: dict) -> tuple[str, dict | None]:
    """The generated text a chunk carries and its usage as {prompt_tokens, completion_tokens, cached_tokens}."""
    if kind == "native":
        meta = obj.get("meta_info") or {}
        usage = {k: meta.get(k) for k in ("prompt_tokens", "completion_tokens", "cached_tokens")}
        return obj.get("delta") or "", usage
    choices = obj.get("choices") or []
    text = ""
    if choices:
        c = choices[0]
        text = ((c.get("delta") or {}).get("content") or "") if kind == "chat" else (c.get("text") or "")
    u = obj.get("usage")
    if not u:
        return text, None
    cached = (u.get("prompt_tokens_details") or {}).get("cached_tokens")
    return text, {"prompt_tokens": u.get("prompt_tokens"), "completion_tokens": u.get("completion_tokens"),
                  "cached_tokens": cached}


async def send_request(client: httpx.AsyncClient, target: HttpTarget, req: BenchRequest, t0: float,
                       output_len: int | None = None) -> RequestResult:
    """Stream one request and time it. Never raises for a failed request: success=False and `error` say why.

    A stream whose tokens all decoded to no text (possible with random weights: ids past the tokenizer decode to
    nothing) has no text chunk; its TTFT is then its latency, the moment the client first saw output."""
    kind, path, body = build_call(target, req, output_len)
    res = RequestResult(False, prompt_len=req.prompt_len, output_len=req.output_len if output_len is None
                        else output_len, system=req.system)
    start = time.perf_counter()
    res.send_time = start - t0
    ttft, last, usage = None, start, None
    try:
        async with client.stream("POST", target.base_url + path, json=body, headers=target.headers) as resp:
            if resp.status_code != 200:
                res.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode(errors='replace')[:300]}"
                return res
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    break
                obj = json.loads(data)
                if "error" in obj:
                    res.error = str(obj["error"])[:300]
                    return res
                now = time.perf_counter()
                text, u = _chunk_text_and_usage(kind, obj)
                usage = u or usage
                if text:
                    if ttft is None:
                        ttft = now - start
                    else:
                        res.itl.append(now - last)
                    last = now
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as e:  # a bad frame fails this request only
        res.error = f"{type(e).__name__}: {e}"
        return res
    res.latency = time.perf_counter() - start
    res.ttft = res.latency if ttft is None else ttft
    if usage:
        res.prompt_len = usage["prompt_tokens"] if usage["prompt_tokens"] is not None else res.prompt_len
        res.output_len = usage["completion_tokens"] if usage["completion_tokens"] is not None else res.output_len
        res.cached_tokens = usage["cached_tokens"]
    res.success = True
    return res


def served_model_name(base_url: str, api_key: str | None = None) -> str:
    """The first model id that GET /v1/models lists (what requests must name)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    r = httpx.get(f"{base_url}/v1/models", headers=headers, timeout=30.0)
    r.raise_for_status()
    return r.json()["data"][0]["id"]


def flush_cache(base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> bool:
    """POST /flush_cache (SGLang / pairserve), retrying while aborted requests drain. False if unsupported."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(f"{base_url}/flush_cache", headers=headers, timeout=30.0)
        if r.status_code == 200:
            return True
        if r.status_code in (404, 405) or time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def _die_with_parent() -> None:
    """preexec_fn: on Linux, have the kernel send SIGTERM to the server if the benchmark dies (even by SIGKILL),
    so no launched server outlives its benchmark. Elsewhere a no-op."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LaunchedServer:
    """`python -m server --model PATH --port P ...` as a subprocess; a context manager that stops it on exit.

    The server runs in its own session, so a Ctrl-C in the terminal reaches only the benchmark, which then
    stops the server itself (SIGTERM, then SIGKILL after STOP_TIMEOUT_S); if the benchmark dies without doing
    so, the kernel sends the server SIGTERM (Linux). Its output goes to `log_path`."""

    def __init__(self, model_path: str, flags: list[str], log_level: str = "warning"):
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.cmd = [sys.executable, "-m", "server", "--model", model_path, "--port", str(self.port),
                    "--log-level", log_level, *flags]
        fd, self.log_path = tempfile.mkstemp(prefix="pairserve-bench-server-", suffix=".log")
        os.close(fd)
        self.proc: subprocess.Popen | None = None

    def log_tail(self, n: int = 4000) -> str:
        return Path(self.log_path).read_text(errors="replace")[-n:]

    def start(self, timeout_s: float = LAUNCH_TIMEOUT_S) -> "LaunchedServer":
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(self.cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pairserve server exited with {self.proc.returncode} during startup "
                                   f"({' '.join(self.cmd)}):\n{self.log_tail()}")
            try:
                if httpx.get(f"{self.base_url}/health", timeout=2.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"pairserve server not healthy after {timeout_s:.0f} s:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> int | None:
        """Stop the server; its exit status (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
            return None

    def __enter__(self) -> "LaunchedServer":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
