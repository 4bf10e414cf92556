"""SGLang's generated-shared-prefix workload: G groups × P prompts, each = group system prompt + own question.

    python -m bench.gsp [--model bench] [--groups 8] [--prompts-per-group 16] [--system-len 512]
                        [--question-len 64] [--output-len 16] [--small-pool-tokens N]

Runs, on the same shuffled requests (all submitted at once, offline): cache off; cache on (LPM); and, with a
KV pool smaller than the working set, LPM vs FCFS. Reports throughput (req/s, input tok/s) and token hit rate.
"""
from __future__ import annotations

import argparse
import json
import random
import time


def make_workload(groups: int, per_group: int, system_len: int, question_len: int, vocab: int, seed: int):
    rng = random.Random(seed)
    reqs = []
    for _ in range(groups):
        system = [rng.randrange(10, vocab - 10) for _ in range(system_len)]
        for _ in range(per_group):
            reqs.append(system + [rng.randrange(10, vocab - 10) for _ in range(question_len)])
    rng.shuffle(reqs)
    return reqs


def run(path: str, prompts: list[list[int]], output_len: int, **flags) -> dict:
    from engine import Engine

    sp = {"max_new_tokens": output_len, "temperature": 0, "ignore_eos": True}
    with Engine(model_path=path, **flags) as eng:
        eng.generate(input_ids=[p[:32] for p in prompts[:2]], sampling_params={**sp, "max_new_tokens": 2})
        eng.flush_cache()
        base = eng.get_stats()
        t = time.perf_counter()
        eng.generate(input_ids=prompts, sampling_params=sp)
        dt = time.perf_counter() - t
        s = eng.get_stats()
    q = s["prefix_cache_queries_total"] - base["prefix_cache_queries_total"]
    h = s["prefix_cache_hits_total"] - base["prefix_cache_hits_total"]
    return {"seconds": dt, "req_per_s": len(prompts) / dt, "input_tok_per_s": sum(map(len, prompts)) / dt,
            "token_hit_rate": h / max(q, 1), "evicted_tokens": s["evicted_tokens_total"]}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bench")
    ap.add_argument("--groups", type=int, default=8)
    ap.add_argument("--prompts-per-group", type=int, default=16)
    ap.add_argument("--system-len", type=int, default=512)
    ap.add_argument("--question-len", type=int, default=64)
    ap.add_argument("--output-len", type=int, default=16)
    ap.add_argument("--max-running-requests", type=int, default=32)
    ap.add_argument("--small-pool-tokens", type=int, default=None,
                    help="pool for the LPM-vs-FCFS runs (default: 3 system prompts + 32 questions' worth)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    from bench.common.model_paths import resolve_model
    from engine.config import ModelConfig

    path = resolve_model(a.model)
    cfg = ModelConfig.from_hf(path)
    prompts = make_workload(a.groups, a.prompts_per_group, a.system_len, a.question_len, cfg.vocab_size, a.seed)
    per_req = a.system_len + a.question_len + a.output_len
    ample = len(prompts) * per_req + 1024
    small = a.small_pool_tokens or 3 * a.system_len + a.max_running_requests * (a.question_len + a.output_len + 8)
    common = dict(max_running_requests=a.max_running_requests, chunked_prefill_size=2048, max_prefill_tokens=4096)
    runs = {
        "cache off": dict(disable_radix_cache=True, kv_cache_tokens=ample),
        "cache on (lpm)": dict(schedule_policy="lpm", kv_cache_tokens=ample),
        f"small pool {small}, lpm": dict(schedule_policy="lpm", kv_cache_tokens=small),
        f"small pool {small}, fcfs": dict(schedule_policy="fcfs", kv_cache_tokens=small),
    }
    results = {}
    print(f"GSP: {a.groups} groups x {a.prompts_per_group} prompts, system {a.system_len}, question "
          f"{a.question_len}, output {a.output_len}; model {a.model}")
    for name, flags in runs.items():
        results[name] = run(path, prompts, a.output_len, **common, **flags)
        print(name, json.dumps({k: round(v, 3) for k, v in results[name].items()}), flush=True)
    off, on = results["cache off"], results["cache on (lpm)"]
    print("\n| run | req/s | input tok/s | token hit rate |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['req_per_s']:.2f} | {r['input_tok_per_s']:.0f} | {100 * r['token_hit_rate']:.1f}% |")
    print(f"\ncache on / off throughput: {on['req_per_s'] / off['req_per_s']:.2f}x")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
