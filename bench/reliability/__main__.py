"""`python -m bench.reliability --model demo --output-file OUT.json`: the reliability figures R1-R5 against real
server processes, one JSON object per line of the list, each with `ok`.

  R1 fuzz   radix cache + slot allocator, random ops through the scheduler's KVManager (fuzz.py)
  R2 soak   log-stream ICL requests at a fixed number in flight, 10% abandoned mid-stream (soak.py)
  R3 bad    schemathesis on /openapi.json + a hand list of malformed bodies (bad_input.py)
  R4 faults kill -9 of the scheduler / the detokenizer, SIGTERM under load, each on a fresh server (faults.py)
  R5 auth   every route × no / wrong / other tenant's / admin key, and cross-tenant ICL examples (auth_check.py)

R5, R2 and R3 share one server (in that order: R3's config updates come last); R4 starts three more.
Exit status 0 when every figure is ok, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.reliability", description=__doc__.split("\n")[0])
    p.add_argument("--model", default="demo")
    p.add_argument("--output-file", required=True)
    p.add_argument("--soak-requests", type=int, default=2000)
    p.add_argument("--soak-concurrency", type=int, default=64)
    p.add_argument("--soak-max-tokens", type=int, default=16)
    p.add_argument("--fuzz-ops", type=int, default=100_000)
    p.add_argument("--schemathesis-examples", type=int, default=50)
    p.add_argument("--only", default="R1,R2,R3,R4,R5", help="comma-separated subset of R1..R5")
    p.add_argument("--server-flags", default="", help="extra flags for every server, e.g. '--kv-cache-tokens 65536'")
    args = p.parse_args(argv)
    only = set(args.only.split(","))

    from bench.reliability.auth_check import run_auth
    from bench.reliability.bad_input import run_bad_input
    from bench.reliability.faults import run_faults
    from bench.reliability.fuzz import run_fuzz
    from bench.reliability.server_proc import ServerProc
    from bench.reliability.soak import run_soak

    work = Path(tempfile.mkdtemp(prefix="pairserve-reliability-"))
    flags = tuple(args.server_flags.split())
    out: dict = {}
    started = time.time()

    def timed(name: str, fn) -> None:
        t0 = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # a crashed check is a red figure, not a missing one
            res = {"error": f"{type(e).__name__}: {e}", "ok": False}
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out[name] = res
        print(f"{name}: {'ok' if res['ok'] else 'FAILED'} ({res['seconds']} s)", file=sys.stderr, flush=True)

    if "R1" in only:
        timed("R1", lambda: run_fuzz(args.fuzz_ops))
    if only & {"R2", "R3", "R5"}:
        srv = ServerProc(args.model, work, ("--pair-policy", "native", *flags))
        try:
            if "R5" in only:
                timed("R5", lambda: run_auth(srv))
            if "R2" in only:
                timed("R2", lambda: run_soak(srv, args.soak_requests, args.soak_concurrency, args.soak_max_tokens))
            if "R3" in only:
                timed("R3", lambda: run_bad_input(srv, args.schemathesis_examples, work))
        finally:
            srv.stop()
    if "R4" in only:
        timed("R4", lambda: run_faults(args.model, work, flags))
    result = {k: out[k] for k in sorted(out)}
    result["meta"] = {"model": args.model, "started_unix": started, "machine": platform.processor() or platform.machine(),
                      "argv": sys.argv[1:] if argv is None else argv, "work_dir": str(work)}
    Path(args.output_file).write_text(json.dumps(result, indent=1) + "\n")
    ok = all(v["ok"] for k, v in out.items())
    print(f"{'all green' if ok else 'NOT all green'}: {args.output_file}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
