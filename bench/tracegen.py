"""Synthetic and log-parsing traces for the prefix-cache simulator (deterministic by seed).

    python -m bench.tracegen chat|shared|icl --n 20000 --seed 0 --rate 5 [--arrival bursty] --out T.jsonl
    python -m bench.tracegen loghub --data /work/shared/data/loghub2k --systems HDFS,Apache --out T.jsonl

- chat: multi-turn sessions. A session picks a system prompt (Zipf over a small pool); turn t's prompt is
  system + user_1 + answer_1 + ... + user_t, so consecutive turns share everything but the newest message.
- shared: one-shot requests = a long app prompt (Zipf-popular among `num_prompts`) + a unique question.
- icl: [instruction][example]*k[query]. Examples live in a pool grouped in clusters; a request picks a cluster
  (Zipf) and k distinct examples from it (Zipf within the cluster), in random order (kNN rank order varies
  with the query). Several examples share a template, so PAIR can substitute one for another.
- loghub: InferLog's stream (DPP pool + kNN examples, logparse.build_stream) for each system, rendered through
  the engine's ICL layout with a tokenizer; systems are interleaved at random.
Arrivals: Poisson at `rate` req/s, or `bursty` = gamma inter-arrival times with coefficient of variation
`burstiness` (same mean rate, clustered in time). With block_size set, prompts are stored as hash_ids.
"""
from __future__ import annotations

import argparse
from typing import Callable

import numpy as np

from bench.cachesim.traces import BlockHasher, TraceRequest, block_hashes, write_trace

VOCAB = (100, 30000)  # synthetic token ids are drawn uniformly from this range


def arrival_times(n: int, rate: float, rng: np.random.Generator, pattern: str = "poisson",
                  burstiness: float = 4.0) -> np.ndarray:
    """[n] increasing arrival times (s) from 0: exponential gaps, or gamma gaps with CV `burstiness`."""
    if rate <= 0:
        raise ValueError(f"rate: must be > 0 (got {rate})")
    if pattern == "poisson":
        gaps = rng.exponential(1.0 / rate, n)
    elif pattern == "bursty":
        shape = 1.0 / burstiness ** 2
        gaps = rng.gamma(shape, 1.0 / (rate * shape), n)
    else:
        raise ValueError(f"arrival: must be 'poisson' or 'bursty' (got {pattern!r})")
    return np.cumsum(gaps) - gaps[0]


def zipf_probs(n: int, a: float) -> np.ndarray:
    """[n] probabilities of a Zipf(a) law over ranks 1..n (rank 1 most popular)."""
    w = 1.0 / np.arange(1, n + 1) ** a
    return w / w.sum()


def _lognormal_len(rng: np.random.Generator, mean: float, sigma: float = 0.6, low: int = 1) -> int:
    mu = np.log(mean) - sigma * sigma / 2  # E[X] = mean
    return max(low, int(rng.lognormal(mu, sigma)))


def _tokens(rng: np.random.Generator, n: int) -> list[int]:
    return rng.integers(VOCAB[0], VOCAB[1], n).tolist()


def _finish(reqs: list[TraceRequest], block_size: int | None) -> list[TraceRequest]:
    """Sort by time; with block_size, swap token_ids for hash_ids (segment offsets stay in tokens)."""
    reqs.sort(key=lambda r: r.timestamp)
    if block_size is not None:
        for r in reqs:
            r.hash_ids, r.token_ids = block_hashes(r.token_ids, block_size), None
    return reqs


def chat_trace(n: int, seed: int = 0, rate: float = 5.0, arrival: str = "poisson", burstiness: float = 4.0,
               num_system_prompts: int = 8, zipf_a: float = 1.1, system_len: int = 600, user_len: int = 120,
               answer_len: int = 250, mean_turns: float = 5.0, think_time: float = 60.0,
               block_size: int | None = None) -> list[TraceRequest]:
    """n requests of multi-turn sessions; `rate` is the request rate (sessions start at rate / mean_turns)."""
    rng = np.random.default_rng(seed)
    systems = [_tokens(rng, _lognormal_len(rng, system_len)) for _ in range(num_system_prompts)]
    sys_p = zipf_probs(num_system_prompts, zipf_a)
    starts = arrival_times(n, rate / mean_turns, rng, arrival, burstiness)
    reqs: list[TraceRequest] = []
    for s, start in enumerate(starts):
        sys_id = int(rng.choice(num_system_prompts, p=sys_p))
        history = list(systems[sys_id])
        # With block_size, hash the growing history incrementally instead of re-hashing every turn's prompt.
        hasher = BlockHasher(block_size).extend(history) if block_size is not None else None
        t = float(start)
        for _ in range(int(rng.geometric(1.0 / mean_turns))):
            user = _tokens(rng, _lognormal_len(rng, user_len))
            history += user
            out_len = _lognormal_len(rng, answer_len)
            if hasher is None:
                prefix = {"token_ids": list(history)}
            else:
                prefix = {"hash_ids": hasher.extend(user).hashes()}
            reqs.append(TraceRequest(t, len(history), out_len, **prefix, session_id=f"s{s}", app_id=f"sys{sys_id}"))
            answer = _tokens(rng, out_len)
            history += answer
            if hasher is not None:
                hasher.extend(answer)
            t += float(rng.exponential(think_time))
        if len(reqs) >= n and s % 256 == 0:
            # Sessions come in start order: once one starts after the n-th earliest request, all later do.
            nth = np.partition(np.fromiter((r.timestamp for r in reqs), float), n - 1)[n - 1]
            if start > nth:
                break
    reqs.sort(key=lambda r: r.timestamp)
    return reqs[:n]


def shared_prompt_trace(n: int, seed: int = 0, rate: float = 5.0, arrival: str = "poisson",
                        burstiness: float = 4.0, num_prompts: int = 50, zipf_a: float = 1.0,
                        prompt_len: int = 1500, query_len: int = 150, output_len: int = 100,
                        block_size: int | None = None) -> list[TraceRequest]:
    """n one-shot requests: a Zipf-popular app prompt + a unique question."""
    rng = np.random.default_rng(seed)
    prompts = [_tokens(rng, _lognormal_len(rng, prompt_len)) for _ in range(num_prompts)]
    probs = zipf_probs(num_prompts, zipf_a)
    times = arrival_times(n, rate, rng, arrival, burstiness)
    reqs = []
    for t in times:
        app = int(rng.choice(num_prompts, p=probs))
        ids = prompts[app] + _tokens(rng, _lognormal_len(rng, query_len))
        reqs.append(TraceRequest(float(t), len(ids), _lognormal_len(rng, output_len), token_ids=ids,
                                 segments=[len(prompts[app])], app_id=f"app{app}"))
    return _finish(reqs, block_size)


def icl_trace(n: int, seed: int = 0, rate: float = 5.0, arrival: str = "poisson", burstiness: float = 4.0,
              k: int = 5, num_clusters: int = 100, cluster_size: int = 20, examples_per_template: int = 4,
              zipf_a: float = 1.0, head_len: int = 200, example_len: int = 45, query_len: int = 60,
              output_len: int = 30, block_size: int | None = None) -> list[TraceRequest]:
    """n ICL requests with k examples from a Zipf-popular clustered pool (see the module docstring)."""
    if k > cluster_size:
        raise ValueError(f"k: must be <= cluster_size ({cluster_size})")
    rng = np.random.default_rng(seed)
    head = _tokens(rng, head_len)
    pool_size = num_clusters * cluster_size
    pool = [_tokens(rng, _lognormal_len(rng, example_len, 0.4, 8)) for _ in range(pool_size)]
    templates = [f"t{i // examples_per_template}" for i in range(pool_size)]
    cluster_p = zipf_probs(num_clusters, zipf_a)
    within_p = zipf_probs(cluster_size, zipf_a)
    times = arrival_times(n, rate, rng, arrival, burstiness)
    reqs = []
    for t in times:
        c = int(rng.choice(num_clusters, p=cluster_p))
        picked = c * cluster_size + rng.choice(cluster_size, size=k, replace=False, p=within_p)
        rng.shuffle(picked)
        ids, segments = list(head), [len(head)]
        for e in picked:
            ids += pool[e]
            segments.append(len(ids))
        ids += _tokens(rng, _lognormal_len(rng, query_len))
        reqs.append(TraceRequest(float(t), len(ids), _lognormal_len(rng, output_len, 0.3), token_ids=ids,
                                 segments=segments, example_ids=[f"e{int(e)}" for e in picked],
                                 example_templates=[templates[int(e)] for e in picked], app_id="icl"))
    return _finish(reqs, block_size)


def loghub_queries(data_dir: str, systems: list[str], seed: int = 0, rate: float = 5.0, arrival: str = "poisson",
                   burstiness: float = 4.0, k: int = 5, max_lines: int | None = None) -> list[tuple]:
    """[(arrival time, system, logparse.ParseQuery)]: InferLog's stream per system, interleaved at random
    (each system keeps its stream order)."""
    from logparse import build_stream, load_system

    rng = np.random.default_rng(seed)
    streams = []
    for system in systems:
        ds = load_system(data_dir, system)
        streams.append(build_stream(ds if max_lines is None else ds.head(max_lines), k=k))
    order = np.concatenate([np.full(len(s), i) for i, s in enumerate(streams)])
    rng.shuffle(order)
    times = arrival_times(len(order), rate, rng, arrival, burstiness)
    cursors = [0] * len(streams)
    out = []
    for t, i in zip(times, order):
        out.append((float(t), systems[i], streams[i][cursors[i]]))
        cursors[i] += 1
    return out


def loghub_icl_trace(data_dir: str, systems: list[str], tokenizer, seed: int = 0, rate: float = 5.0,
                     arrival: str = "poisson", burstiness: float = 4.0, k: int = 5, output_len: int = 28,
                     max_lines: int | None = None) -> list[TraceRequest]:
    """loghub_queries rendered by the engine's ICL renderer with `tokenizer` (one with a chat template)."""
    from engine.pair.render import render_icl, validate_icl
    from logparse import to_icl

    reqs = []
    for t, system, query in loghub_queries(data_dir, systems, seed, rate, arrival, burstiness, k, max_lines):
        prompt = render_icl(tokenizer, validate_icl(to_icl(query)))
        ids, boundaries, _ = prompt.assemble(prompt.examples)
        reqs.append(TraceRequest(t, len(ids), output_len, token_ids=ids, segments=list(boundaries),
                                 example_ids=[ex.id for ex in prompt.examples],
                                 example_templates=[ex.output for ex in prompt.examples], app_id=system))
    return reqs


GENERATORS: dict[str, Callable[..., list[TraceRequest]]] = {
    "chat": chat_trace, "shared": shared_prompt_trace, "icl": icl_trace}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=[*GENERATORS, "loghub"])
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--arrival", default="poisson", choices=["poisson", "bursty"])
    ap.add_argument("--burstiness", type=float, default=4.0)
    ap.add_argument("--block-size", type=int, default=None, help="store hash_ids of this block size")
    ap.add_argument("--data", default="/work/shared/data/loghub2k")
    ap.add_argument("--systems", default="HDFS,Apache")
    ap.add_argument("--tokenizer", default=None, help="checkpoint dir (default: a fresh tiny checkpoint)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    common = dict(seed=a.seed, rate=a.rate, arrival=a.arrival, burstiness=a.burstiness)
    if a.kind == "loghub":
        reqs = loghub_icl_trace(a.data, a.systems.split(","), _tokenizer(a.tokenizer), **common)
        meta = {"kind": "loghub", "systems": a.systems, **common}
    else:
        reqs = GENERATORS[a.kind](a.n, block_size=a.block_size, **common)
        meta = {"kind": a.kind, "n": a.n, **common}
    n = write_trace(a.out, reqs, block_size=a.block_size, meta=meta)
    print(f"wrote {n} requests to {a.out}")


def _tokenizer(path: str | None):
    import tempfile

    from engine.models.loader import load_tokenizer

    if path is None:
        from engine.models.tiny import write_tiny_checkpoint

        path = write_tiny_checkpoint(tempfile.mkdtemp(prefix="tracegen-tok-"), preset="bench", seed=0)
    return load_tokenizer(path)


if __name__ == "__main__":
    main()
