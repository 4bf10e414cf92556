"""Offline: what each submission order of `python -m logparse` buys in prompt-cache hits, in seconds, without a model.

    python -m bench.logparse_file.replay --data DIR [--systems all|HDFS,Spark] [--engine-model bench]
        [--kv-prompts 6] [--inflight 16] [--refine native] [--orders arrival,prefix] [--json OUT]

Per Loghub-2k system: the LLM calls the pure oracle makes (`logparse.cli.oracle_calls`, wave after wave, in each
order) are rendered as the engine renders them (its tokenizer and chat template, the icl segments), and replayed in
submission order through the engine's own RadixCache with PAIR refining each request against it (bench.cachesim's
CacheReplay), under a pool of `--kv-prompts` mean prompts with the last `--inflight` requests holding their KV. The
token hit rate (cached prompt tokens / prompt tokens) per order is printed as a markdown table. What it leaves out:
the engine's scheduler (LPM reordering of waiting requests, retractions) and time; `python -m bench.logparse_file`
measures the orders through a running engine.
"""
from __future__ import annotations

import argparse
import json
import os

from bench.cachesim.replay import CacheReplay
from bench.cachesim.traces import TraceRequest
from bench.cachesim.units import to_units
from bench.common.model_paths import resolve_model
from logparse import LOGHUB_SYSTEMS, list_systems
from logparse.backends import LlmCall, icl_body
from logparse.cli import oracle_calls


def trace_of(calls: list[LlmCall], tokenizer, encoder, refine: str) -> list[TraceRequest]:
    """One trace request per call, one time step apart in submission order; output = the right answer's tokens."""
    from engine.pair.render import render_icl

    out = []
    for t, call in enumerate(calls):
        prompt = render_icl(tokenizer, icl_body(call, refine), encoder)
        ids, boundaries, _ = prompt.assemble(prompt.examples)
        answer = len(tokenizer.encode(f"`{call.truth}`", add_special_tokens=False))
        out.append(TraceRequest(float(t), len(ids), answer, token_ids=ids, segments=list(boundaries),
                                example_ids=[ex.id for ex in prompt.examples],
                                example_templates=[ex.output for ex in prompt.examples]))
    return out


def replay_system(a, system: str, tokenizer, encoder) -> dict:
    log = os.path.join(a.data, system, f"{system}_2k.log")
    base = [log, "--format", "loghub", "--model", f"oracle:{log}_structured_corrected.csv", "--refine", a.refine]
    row: dict = {"system": system}
    for order in a.order_list:
        trace = trace_of(oracle_calls([*base, "--order", order]), tokenizer, encoder, a.refine)
        kv = max(int(sum(r.input_length for r in trace) / len(trace) * a.kv_prompts), 256)
        units = to_units(trace, 1, pair=a.refine)
        stats = CacheReplay(units, kv, inflight=a.inflight).run()
        row.update({"calls": len(trace), "kv_cache_tokens": kv, f"{order}_hit_rate": stats.token_hit_rate,
                    f"{order}_prompt_tokens": stats.query_tokens, f"{order}_cached_tokens": stats.hit_tokens})
    return row


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True, help="Loghub-2k dir (one sub-dir per system)")
    ap.add_argument("--systems", default="all")
    ap.add_argument("--engine-model", default="bench", help="whose tokenizer renders the prompts: bench | tiny | DIR")
    ap.add_argument("--kv-prompts", type=float, default=6.0, help="pool in mean prompts")
    ap.add_argument("--inflight", type=int, default=16, help="requests holding their KV at once")
    ap.add_argument("--refine", default="native", choices=("none", "table", "native"))
    ap.add_argument("--orders", default="arrival,prefix")
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    available = list_systems(a.data)
    a.system_list = [s for s in LOGHUB_SYSTEMS if s in available] if a.systems == "all" else a.systems.split(",")
    if any(s not in available for s in a.system_list):
        ap.error(f"--systems: not all of {a.system_list} are under {a.data}")
    a.order_list = a.orders.split(",")
    return a


def main(argv=None) -> list[dict]:
    from engine.models.loader import load_tokenizer
    from engine.pair.render import SegmentEncoder

    a = parse_args(argv)
    tokenizer = load_tokenizer(resolve_model(a.engine_model))
    encoder = SegmentEncoder(tokenizer)
    rows = [replay_system(a, s, tokenizer, encoder) for s in a.system_list]
    cols = ["system", "calls", "kv_cache_tokens", *(f"{o}_hit_rate" for o in a.order_list)]
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    means = {o: sum(r[f"{o}_hit_rate"] for r in rows) / len(rows) for o in a.order_list}
    print("mean over systems:", json.dumps({o: round(v, 4) for o, v in means.items()}))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": {k: v for k, v in vars(a).items()}, "rows": rows, "mean_hit_rate": means}, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
