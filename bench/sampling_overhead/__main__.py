"""What logprobs, penalties and grammars add to a decode step, against a plain greedy step of the same batch.

    python -m bench.sampling_overhead [--model demo] [--batch 64] [--steps 16] [--rounds 3]
        [--variants plain,logprobs,penalties,grammar,all] [--output-file OUT.json]

For each variant, `batch` requests (one chat prompt each, greedy, ignore_eos) are admitted into one engine loop
(EngineLoop, in this thread); once all of them decode together, `steps` decode steps are timed, each whole
(schedule → forward → logprobs, logit processing and sampling → results), its model forward alone, and its
logit processing alone (bias, penalties, grammar masks). "rest" = step - forward is everything around the model
(scheduling, logprobs, processing, sampling). Variants:
- plain: nothing asked (also what a step with no constrained request pays: the ratio of its sampling time to
  the forward is printed);
- logprobs: return_logprob with top_logprobs_num 5 (prompt logprobs off);
- penalties: frequency 0.5, presence 0.3, repetition 1.1, min_new_tokens 4, three logit_bias entries;
- grammar: a JSON schema whose array needs at least 64 items (no request can finish inside the timed steps);
- all: every row asks all of the above.
Rounds alternate the variants; medians over all timed steps of all rounds; ratios are to plain's median step.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from bench.common.model_paths import resolve_model
from engine.config import ServerArgs
from engine.logprob_options import LogprobOptions
from engine.loop import EngineLoop
from engine.models.loader import load_tokenizer
from engine.sampling_params import SamplingParams

SCHEMA = json.dumps({"type": "object", "properties": {"items": {"type": "array", "items": {"type": "string"},
                                                                "minItems": 64}}, "required": ["items"]})
PENALTIES = {"frequency_penalty": 0.5, "presence_penalty": 0.3, "repetition_penalty": 1.1, "min_new_tokens": 4,
             "logit_bias": {"13": -1.0, "28": 2.0, "198": 0.5}}
VARIANTS = ("plain", "logprobs", "penalties", "grammar", "all")


def variant_request(variant: str, max_new_tokens: int) -> tuple[SamplingParams, LogprobOptions | None]:
    sp: dict = {"max_new_tokens": max_new_tokens, "temperature": 0, "ignore_eos": True}
    if variant in ("penalties", "all"):
        sp.update(PENALTIES)
    if variant in ("grammar", "all"):
        sp["json_schema"] = SCHEMA
    logprob = LogprobOptions(return_logprob=True, top_logprobs_num=5) if variant in ("logprobs", "all") else None
    return SamplingParams.from_dict(sp).validate(), logprob


class ForwardTimer:
    """Times the runner's model forward inside each step, and its logit processing (bias, penalties, grammar
    masks: what a step without any of them skips)."""

    def __init__(self, runner) -> None:
        self.last = 0.0
        self.processing = 0.0
        real, real_apply = runner.forward, runner.logit_processor.apply

        def timed(batch):
            t0 = time.perf_counter()
            out = real(batch)
            self.last = time.perf_counter() - t0
            return out

        def timed_apply(*a):
            t0 = time.perf_counter()
            real_apply(*a)
            self.processing = time.perf_counter() - t0

        runner.forward = timed
        runner.logit_processor.apply = timed_apply


def run_variant(loop: EngineLoop, timer: ForwardTimer, prompts: list[list[int]], variant: str,
                steps: int, tag: str) -> tuple[list[float], list[float], list[float]]:
    sp, logprob = variant_request(variant, max_new_tokens=steps + 64)
    rids = [f"{tag}-{i}" for i in range(len(prompts))]
    for rid, ids in zip(rids, prompts):
        loop.add(rid, ids, sp, logprob=logprob)
    sch = loop.scheduler
    while sch.waiting or sch.chunked is not None:  # prefill (and grammar compilation) until all decode together
        loop.step()
    totals, forwards, processing = [], [], []
    for _ in range(steps):
        assert len(sch.running) == len(prompts) and not sch.waiting, "a request left the batch"
        t0 = time.perf_counter()
        loop.step()
        totals.append(time.perf_counter() - t0)
        forwards.append(timer.last)
        processing.append(timer.processing)
    for rid in rids:
        loop.abort(rid)
    while loop.has_work():
        loop.step()
    loop.flush_cache()
    return totals, forwards, processing


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="demo")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--output-file", default=None, help="write the medians here (JSON)")
    args = ap.parse_args()
    variants = args.variants.split(",")
    assert set(variants) <= set(VARIANTS) and variants[0] == "plain", f"variants from {VARIANTS}, plain first"
    path = resolve_model(args.model)
    tokenizer = load_tokenizer(path)
    loop = EngineLoop(ServerArgs(model_path=path, max_running_requests=args.batch,
                                 kv_cache_tokens=args.batch * 512), path, tokenizer)
    timer = ForwardTimer(loop.runner)
    prompts = []
    for i in range(args.batch):
        text = f"List {i + 3} kinds of fruit, as JSON."
        if getattr(tokenizer, "chat_template", None):
            text = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False)
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    run_variant(loop, timer, prompts, "all", 2, "warmup")  # compiles the grammar, warms every path
    results: dict[str, tuple[list[float], list[float], list[float]]] = {v: ([], [], []) for v in variants}
    for r in range(args.rounds):
        for v in variants:
            for acc, new in zip(results[v], run_variant(loop, timer, prompts, v, args.steps, f"r{r}-{v}")):
                acc.extend(new)
    base = statistics.median(results["plain"][0])
    print(f"model {args.model}, batch {args.batch}, {args.steps} decode steps x {args.rounds} rounds per variant")
    print(f"{'variant':<10} {'step ms':>8} {'forward ms':>10} {'rest ms':>8} {'processing ms':>13} "
          f"{'step / plain':>12}")
    out = {}
    for v in variants:
        totals, forwards, processing = results[v]
        step, fwd, proc = statistics.median(totals), statistics.median(forwards), statistics.median(processing)
        rest = statistics.median(t - f for t, f in zip(totals, forwards))
        out[v] = {"step_ms": step * 1e3, "forward_ms": fwd * 1e3, "rest_ms": rest * 1e3,
                  "processing_ms": proc * 1e3, "ratio": step / base}
        print(f"{v:<10} {step * 1e3:8.2f} {fwd * 1e3:10.2f} {rest * 1e3:8.2f} {proc * 1e3:13.3f} "
              f"{step / base:12.3f}")
    if args.output_file:
        with open(args.output_file, "w") as f:
            json.dump({"model": args.model, "batch": args.batch, "steps": args.steps, "rounds": args.rounds,
                       "variants": out}, f, indent=1)


if __name__ == "__main__":
    main()
