"""Online serving benchmark in SGLang bench_serving's style, against pairserve, any OpenAI-compatible server, or HF.

    python -m bench.serving --backend pairserve|openai|hf [--base-url URL] --model bench|demo|DIR
        --dataset random|gsp|loghub [--data DIR --systems all|A,B] --num-prompts N --request-rate R|inf
        [--max-concurrency C] [--seed S] [--output-file OUT.jsonl] [--output-details]
        [--random-input-len 1024 --random-output-len 128 --random-range-ratio 0.0 --random-kind ids|words]
        [--gsp-num-groups 8 --gsp-system-prompt-len 512 --gsp-question-len 64 --gsp-output-len 16]
        [--variant none|radix|table|native] [--server-args "--schedule-policy fcfs ..."] [--dtype bfloat16]

Requests arrive as a Poisson process of rate R (inf: all at t=0; exponential gaps drawn with --seed), at most C
in flight (an asyncio semaphore; time spent waiting for it is not part of TTFT, as in bench_serving).
Backends (bench/serving/backends.py, bench/serving/hf.py): `pairserve` launches `python -m server` on a free
port unless --base-url is given (with the --variant's flags, a KV pool sized to hold the whole run up to
--ample-kv-gb, and --server-args); `openai` needs --base-url and sends rendered chat messages for loghub; `hf`
runs transformers in-process. Every backend first serves the first --warmup-requests requests untimed; HTTP
servers then get POST /flush_cache (as bench_serving does for SGLang), so the warm-up leaves no cache hits.
--model names the checkpoint the prompts are tokenized with (and that pairserve / hf load).
Metrics: bench/serving/metrics.py. The result block is printed and one JSON record per run is appended to
--output-file. Ctrl-C (or SIGTERM) stops the run and reports over the requests that completed (the record says
"interrupted": true).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import shlex
import signal
import sys
import threading
import time
from typing import Callable

import httpx
import numpy as np
from tqdm import tqdm

from bench.serving.backends import VARIANT_FLAGS, HttpTarget, LaunchedServer, flush_cache, send_request, \
    served_model_name
from bench.serving.data import DATASETS, BenchRequest, build_dataset
from bench.serving.metrics import RequestResult, compute_metrics, format_result_block

BACKENDS = ("pairserve", "openai", "hf")


def parse_rate(text: str) -> float:
    rate = float(text)
    if not rate > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 or inf (got {text!r})")
    return rate


def add_workload_args(ap: argparse.ArgumentParser) -> None:
    """The flags bench.serving and bench.compare share: model, dataset, arrivals."""
    ap.add_argument("--model", default="bench", help="bench (random 31M Qwen2) | demo | checkpoint dir")
    ap.add_argument("--dtype", default="auto", help="for the servers this launches and for hf (auto: bfloat16 where "
                    "the CPU computes it natively, else float32)")
    ap.add_argument("--dataset", default="random", choices=DATASETS)
    ap.add_argument("--data", default=None, help="loghub: the Loghub-2k directory")
    ap.add_argument("--systems", default="all", help="loghub: comma-separated systems, or all")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--request-rate", type=parse_rate, default=math.inf, help="requests/s (Poisson), or inf")
    ap.add_argument("--max-concurrency", type=int, default=None, help="requests in flight at most")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--warmup-requests", type=int, default=1, help="served untimed first (>= 1)")
    ap.add_argument("--random-input-len", type=int, default=1024)
    ap.add_argument("--random-output-len", type=int, default=128)
    ap.add_argument("--random-range-ratio", type=float, default=0.0)
    ap.add_argument("--random-kind", default="ids", choices=("ids", "words"))
    ap.add_argument("--gsp-num-groups", type=int, default=8)
    ap.add_argument("--gsp-system-prompt-len", type=int, default=512)
    ap.add_argument("--gsp-question-len", type=int, default=64)
    ap.add_argument("--gsp-output-len", type=int, default=16)
    ap.add_argument("--server-args", default="", help="extra flags for launched pairserve servers")
    ap.add_argument("--ample-kv-gb", type=float, default=1.0, help="cap on a launched server's KV pool")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--disable-ignore-eos", action="store_true", help="do not send ignore_eos (OpenAI's API)")
    ap.add_argument("--output-details", action="store_true", help="also record ITLs and errors per request")


def check_workload_args(ap: argparse.ArgumentParser, a: argparse.Namespace) -> None:
    if a.num_prompts < 1:
        ap.error("--num-prompts: must be >= 1")
    if a.warmup_requests < 1:
        ap.error("--warmup-requests: must be >= 1")
    if a.max_concurrency is not None and a.max_concurrency < 1:
        ap.error("--max-concurrency: must be >= 1")
    if a.dataset == "loghub" and not a.data:
        ap.error("--data: the loghub dataset needs the Loghub-2k directory")


def workload_args(args) -> dict:
    """The flags that shape the chosen dataset's requests (for the record)."""
    prefix = {"random": "random_", "gsp": "gsp_", "loghub": "systems"}[args.dataset]
    return {k: v for k, v in vars(args).items() if k.startswith(prefix) or (args.dataset == "loghub" and k == "data")}


def arrival_offsets(n: int, rate: float, seed: int) -> list[float]:
    """Send offsets (s): 0 for the first request, then exponential gaps of mean 1/rate (all 0 for inf)."""
    if math.isinf(rate):
        return [0.0] * n
    gaps = np.random.default_rng(seed).exponential(1.0 / rate, size=max(n - 1, 0))
    return [0.0] + np.cumsum(gaps).tolist()


def launch_flags(args, model_path: str, requests: list[BenchRequest], variant: str) -> list[str]:
    """Flags for a launched pairserve: dtype, the variant's, an ample KV pool (unless --server-args sizes it)."""
    from bench.logparse.stream import kv_bytes_per_token

    extra = shlex.split(args.server_args)
    flags = ["--dtype", args.dtype, *VARIANT_FLAGS[variant]]
    if not any(f.startswith(("--kv-cache-tokens", "--mem-fraction")) for f in extra):
        need = sum(r.prompt_len + r.output_len for r in requests) + 1024
        cap = int(args.ample_kv_gb * 2**30) // kv_bytes_per_token(model_path, args.dtype)
        one = max(r.prompt_len + r.output_len for r in requests) + 64
        flags += ["--kv-cache-tokens", str(max(min(need, cap), one))]
    return flags + extra


class HttpRunner:
    """Drives an HTTP target: `prepare` warms it up, `run` serves a request stream."""

    notes: tuple[str, ...] = ()

    def __init__(self, target: HttpTarget):
        self.target = target

    def prepare(self, requests: list[BenchRequest], warmup: int, max_concurrency: int | None) -> None:
        """Serve the first `warmup` requests untimed, then flush the prefix cache so the run starts cold (and the
        warm-up's prompts give no hits). /flush_cache is SGLang's and pairserve's; a server without it (404) is
        left as it is."""
        done: list[RequestResult] = []
        batch = requests[:max(warmup, 1)]
        asyncio.run(self._run(batch, [0.0] * len(batch), max_concurrency, done, time.perf_counter(), lambda n: None))
        failed = [r.error for r in done if not r.success]
        if failed:
            raise RuntimeError(f"warm-up request failed: {failed[0]}")
        self.reset()

    def reset(self) -> None:
        """Between runs: empty the server's prefix cache, so each run starts cold."""
        flush_cache(self.target.base_url, self.target.api_key)

    def run(self, requests, arrivals, max_concurrency, results, t0, on_done) -> None:
        asyncio.run(self._run(requests, arrivals, max_concurrency, results, t0, on_done))

    async def _run(self, requests, arrivals, max_concurrency, results, t0, on_done) -> None:
        sem = asyncio.Semaphore(max_concurrency or len(requests))
        limits = httpx.Limits(max_connections=max_concurrency or len(requests), max_keepalive_connections=None)
        async with httpx.AsyncClient(timeout=httpx.Timeout(None, connect=30.0), limits=limits) as client:
            async def one(req: BenchRequest, offset: float) -> None:
                await asyncio.sleep(max(0.0, t0 + offset - time.perf_counter()))
                async with sem:
                    results.append(await send_request(client, self.target, req, t0))
                on_done(1)

            await asyncio.gather(*(one(r, a) for r, a in zip(requests, arrivals)))


def run_once(runner, requests: list[BenchRequest], arrivals: list[float], max_concurrency: int | None,
             desc: str = "") -> tuple[list[RequestResult], float, bool]:
    """(results of the completed requests, duration_s, interrupted). Ctrl-C ends the run early, not the caller."""
    results: list[RequestResult] = []
    bar = tqdm(total=len(requests), desc=desc or None, file=sys.stderr, mininterval=1.0, leave=False,
               disable=None)  # None: no bar when stderr is not a terminal (logs stay clean)
    t0 = time.perf_counter()
    interrupted = False
    try:
        runner.run(requests, arrivals, max_concurrency, results, t0, bar.update)
    except KeyboardInterrupt:
        interrupted = True
    duration = time.perf_counter() - t0
    bar.close()
    return results, duration, interrupted


def make_record(results: list[RequestResult], duration: float, interrupted: bool, meta: dict,
                details: bool = False) -> dict:
    """The run's JSON record: meta, the metrics, and per-request arrays (in send order)."""
    rec = {**meta, "interrupted": interrupted, **compute_metrics(results, max(duration, 1e-9))}
    ok = sorted((r for r in results if r.success), key=lambda r: r.send_time)
    rec.update(ttfts=[round(r.ttft, 6) for r in ok], e2e_latencies=[round(r.latency, 6) for r in ok],
               input_lens=[r.prompt_len for r in ok], output_lens=[r.output_len for r in ok],
               cached_tokens_list=[r.cached_tokens for r in ok], systems=[r.system for r in ok])
    if details:
        rec["itls"] = [[round(x, 6) for x in r.itl] for r in ok]
        rec["errors"] = [r.error for r in results if not r.success]
    return rec


def append_jsonl(path: str, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def open_backend(backend: str, args, model_path: str, requests: list[BenchRequest], base_url: str | None = None,
                 variant: str = "radix", opened: Callable[[object], None] = lambda x: None):
    """A runner for `backend`; a launched server is passed to `opened` (the caller stops it)."""
    if backend == "hf":
        from bench.serving.hf import HFBackend

        return HFBackend(model_path, args.dtype)
    if base_url is None:
        if backend != "pairserve":
            raise ValueError("--base-url: the openai backend needs the server's URL")
        server = LaunchedServer(model_path, launch_flags(args, model_path, requests, variant))
        opened(server)
        base_url = server.start().base_url
    base_url = base_url.rstrip("/").removesuffix("/v1")
    target = HttpTarget(base_url, served_model_name(base_url, args.api_key), native_icl=backend == "pairserve",
                        api_key=args.api_key, ignore_eos=not args.disable_ignore_eos)
    return HttpRunner(target)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within: SIGTERM (e.g. from `timeout`) acts like Ctrl-C, so the benchmark reports what it measured and
    stops its servers. The previous handler comes back on exit; off the main thread nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--backend", required=True, choices=BACKENDS)
    ap.add_argument("--base-url", default=None, help="server to benchmark (pairserve: launch one if absent)")
    ap.add_argument("--variant", default="radix", choices=tuple(VARIANT_FLAGS), help="launched pairserve's policy")
    ap.add_argument("--output-file", default=None, help="append one JSON record per run here")
    add_workload_args(ap)
    a = ap.parse_args(argv)
    check_workload_args(ap, a)
    if a.backend == "openai" and not a.base_url:
        ap.error("--base-url: required with --backend openai")
    if a.backend == "hf" and a.base_url:
        ap.error("--base-url: the hf backend runs in-process and takes no URL")
    return a


def main(argv=None) -> dict:
    """Run one benchmark; returns its record (also printed as the result block and appended to --output-file)."""
    args = parse_args(argv)
    with sigterm_as_interrupt():
        return _main(args)


def load_workload(args) -> tuple[str, list[BenchRequest], list[float]]:
    """(checkpoint dir, requests, arrival offsets) for the workload flags of add_workload_args."""
    from bench.common.model_paths import resolve_model
    from engine.models.loader import load_tokenizer

    path = resolve_model(args.model)
    requests = build_dataset(args, load_tokenizer(path))
    return path, requests, arrival_offsets(len(requests), args.request_rate, args.seed)


def _main(args) -> dict:
    path, requests, arrivals = load_workload(args)
    servers: list[LaunchedServer] = []
    try:
        runner = open_backend(args.backend, args, path, requests, args.base_url, args.variant, servers.append)
        runner.prepare(requests, args.warmup_requests, args.max_concurrency)
        results, duration, interrupted = run_once(runner, requests, arrivals, args.max_concurrency, args.backend)
    finally:
        for s in servers:
            s.stop()
    meta = {"backend": args.backend, "variant": args.variant if args.backend == "pairserve" else None,
            "base_url": args.base_url, "model": args.model, "dataset": args.dataset, "num_prompts": len(requests),
            "request_rate": "inf" if math.isinf(args.request_rate) else args.request_rate,
            "max_concurrency": args.max_concurrency, "seed": args.seed, "timestamp": time.time(),
            "workload": workload_args(args), "notes": list(runner.notes)}
    record = make_record(results, duration, interrupted, meta, args.output_details)
    notes = list(runner.notes) + (["interrupted (Ctrl-C / SIGTERM): metrics cover completed requests only"]
                                  if interrupted else [])
    errors = [r.error for r in results if not r.success]
    if errors:
        notes.append(f"{len(errors)} requests failed; the first: {errors[0]}")
    print(format_result_block(record, args.backend, args.request_rate, args.max_concurrency, notes), flush=True)
    if args.output_file:
        append_jsonl(args.output_file, record)
    return record

