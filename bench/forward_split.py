"""Where an in-process workload's time goes: model forwards by mode (extend / decode) against wall time.

    python -m bench.forward_split logparse --data DIR --systems HDFS --limit 40 --pair native   (bench.logparse args)
    python -m bench.forward_split random [--model bench] [--num-prompts 64] [--concurrency 16] [--input-len 256]
        [--output-len 32] [--seed 1] [--no-enable-mixed-chunk]
    python -m bench.forward_split decode [--model bench] [--batch 8] [--context 1000] [--new-tokens 48]
        [--attention-backend auto|cpu|torch]

Every ModelRunner.forward in this process is timed (CPU ops are synchronous), with its step's request count and
tokens (extend: new prompt tokens; decode: one per request), and within it four pieces: building the batch's
tensors, the linears, extend attention and decode attention (the rest is norms, rotary, activations, sampling
inputs and Python). `logparse` runs bench.logparse unchanged under the
timer; `random` drives an in-process Engine from C streaming threads with prompts of uniform random length in
[1, input-len] and outputs of [1, output-len] tokens (ignore_eos), like `bench.serving --dataset random
--random-range-ratio 0`. `decode` times decode steps alone: `batch` requests with `context`-token random prompts
decode together (after one warm-up round), and the median decode forward is printed.
"""
from __future__ import annotations

import argparse
import random
import sys
import threading
import time

from engine.attention.cpu_backend import CpuBackend
from engine.attention.torch_native import TorchNativeBackend
from engine.model_runner import ModelRunner
from engine.models.layers import BucketedLinear
from engine.forward_mode import ForwardMode

# (class, method, piece): what ForwardSplit times inside each forward; CpuBackend's _extend and _decode fall back to
# the torch ones through super(), so only the outermost timed call counts
PIECES = ((ModelRunner, "build_forward_batch", "batch build"), (BucketedLinear, "forward", "linears"),
          (TorchNativeBackend, "_extend", "extend attention"), (TorchNativeBackend, "_decode", "decode attention"),
          (CpuBackend, "_extend", "extend attention"), (CpuBackend, "_decode", "decode attention"))
PIECE_NAMES = tuple(dict.fromkeys(piece for _, _, piece in PIECES))  # in order, once each


class ForwardSplit:
    """Patches ModelRunner.forward and the PIECES (class-wide, this process) to sum time, steps, requests and
    tokens per mode, and each piece's seconds per mode."""

    def __init__(self):
        # per mode: seconds, steps, requests, tokens (a mixed step's tokens: its prompt tokens plus one per decode)
        self.acc = {"extend": [0.0, 0, 0, 0], "mixed": [0.0, 0, 0, 0], "decode": [0.0, 0, 0, 0]}
        self.pieces = {mode: dict.fromkeys(PIECE_NAMES, 0.0) for mode in self.acc}  # seconds inside forwards
        self.last_extend_end: float | None = None  # perf_counter when the latest extend forward returned
        self.decode_step_s: list[float] = []  # each decode forward's seconds
        self._orig = ModelRunner.forward
        self._orig_pieces = [(cls, name, cls.__dict__[name]) for cls, name, _ in PIECES]
        self._mode: str | None = None  # the running forward's mode
        self._depth = 0  # nesting of timed piece calls

    def _time_piece(self, fn, piece: str):
        def timed(*args, **kwargs):
            if self._mode is None or self._depth:
                return fn(*args, **kwargs)
            self._depth += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.pieces[self._mode][piece] += time.perf_counter() - t
                self._depth -= 1
        return timed

    def __enter__(self) -> "ForwardSplit":
        orig, acc = self._orig, self.acc
        for (cls, name, piece), (_, _, fn) in zip(PIECES, self._orig_pieces):
            setattr(cls, name, self._time_piece(fn, piece))

        def timed(runner, batch):
            t = time.perf_counter()
            self._mode = batch.mode.value
            try:
                return orig(runner, batch)
            finally:
                self._mode = None
                end = time.perf_counter()
                decode = batch.mode is ForwardMode.DECODE
                if decode:
                    self.decode_step_s.append(end - t)
                else:
                    self.last_extend_end = end
                a = acc[batch.mode.value]
                a[0] += end - t
                a[1] += 1
                a[2] += len(batch.reqs)
                a[3] += len(batch.reqs) if decode else sum(batch.extend_lens)

        ModelRunner.forward = timed
        return self

    def __exit__(self, *exc) -> None:
        ModelRunner.forward = self._orig
        for cls, name, fn in self._orig_pieces:
            setattr(cls, name, fn)

    def reset(self) -> None:
        for a in self.acc.values():
            a[:] = [0.0, 0, 0, 0]
        for p in self.pieces.values():
            p.update(dict.fromkeys(p, 0.0))
        self.last_extend_end = None
        self.decode_step_s.clear()

    @property
    def seconds(self) -> float:
        return sum(a[0] for a in self.acc.values())

    @property
    def steps(self) -> int:
        return sum(a[1] for a in self.acc.values())

    def table(self, wall_s: float) -> str:
        lines = [f"wall {wall_s:.2f} s", "| forwards | seconds | steps | requests per step | tokens | tok/s | "
                 + " | ".join(f"{p} s" for p in PIECE_NAMES) + " |", "|---|---|---|---|---|---|" + "---|" * 4]
        for mode, (sec, steps, reqs, toks) in self.acc.items():
            if mode == "mixed" and not steps:
                continue  # --enable-mixed-chunk off
            lines.append(f"| {mode} | {sec:.2f} | {steps} | {reqs / max(steps, 1):.1f} | {toks:,} | "
                         f"{toks / max(sec, 1e-9):,.0f} | " + " | ".join(f"{v:.2f}" for v in self.pieces[mode].values())
                         + " |")
        return "\n".join(lines)


def run_random(argv: list[str]) -> None:
    from bench.common.model_paths import resolve_model
    from engine import Engine

    ap = argparse.ArgumentParser(prog="python -m bench.forward_split random")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--num-prompts", type=int, default=64)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--input-len", type=int, default=256)
    ap.add_argument("--output-len", type=int, default=32)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--enable-mixed-chunk", action=argparse.BooleanOptionalAction, default=True,
                    help="decode running requests in prefill steps (the engine's default)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    with Engine(model_path=resolve_model(a.model), enable_mixed_chunk=a.enable_mixed_chunk) as eng, \
            ForwardSplit() as split:
        vocab = len(eng.tokenizer)
        reqs = [([rng.randrange(10, vocab - 10) for _ in range(rng.randint(1, a.input_len))],
                 rng.randint(1, a.output_len)) for _ in range(a.num_prompts)]
        eng.generate(input_ids=[list(range(10, 200))], sampling_params={"max_new_tokens": 4})  # warm-up
        split.reset()
        pending, lock = iter(reqs), threading.Lock()

        def worker() -> None:
            while True:
                with lock:
                    r = next(pending, None)
                if r is None:
                    return
                for _ in eng.generate(input_ids=r[0], sampling_params={"max_new_tokens": r[1], "ignore_eos": True},
                                      stream=True):
                    pass

        t = time.perf_counter()
        threads = [threading.Thread(target=worker) for _ in range(a.concurrency)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        wall = time.perf_counter() - t
    print(f"{a.num_prompts} requests, {a.num_prompts / wall:.1f} req/s")
    print(split.table(wall))


def run_decode(argv: list[str]) -> float:
    """Median decode forward (seconds) of `batch` requests decoding together over `context`-token prompts."""
    from bench.common.model_paths import resolve_model
    from engine import Engine

    ap = argparse.ArgumentParser(prog="python -m bench.forward_split decode")
    ap.add_argument("--model", default="bench")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--context", type=int, default=1000)
    ap.add_argument("--new-tokens", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--attention-backend", default="auto", help="as the engine's flag (auto: cpu on CPU)")
    a = ap.parse_args(argv)
    rng = random.Random(a.seed)
    sp = {"max_new_tokens": a.new_tokens, "ignore_eos": True, "temperature": 0}
    with Engine(model_path=resolve_model(a.model), kv_cache_tokens=4 * a.batch * (a.context + a.new_tokens),
                max_running_requests=a.batch, attention_backend=a.attention_backend) as eng, ForwardSplit() as split:
        vocab = len(eng.tokenizer)
        for _ in range(2):  # a warm-up round first: its shapes build oneDNN primitives
            split.reset()
            prompts = [[rng.randrange(10, vocab - 10) for _ in range(a.context)] for _ in range(a.batch)]
            eng.generate(input_ids=prompts, sampling_params=sp)
    steps = sorted(split.decode_step_s)
    median = steps[len(steps) // 2]
    print(f"batch {a.batch} x {a.context}-token contexts: decode forward median {median * 1e3:.2f} ms "
          f"over {len(steps)} steps")
    dec_s, dec_steps = split.acc["decode"][:2]
    pieces = ", ".join(f"{p} {v / dec_steps * 1e3:.2f} ms" for p, v in split.pieces["decode"].items())
    print(f"per decode step: {pieces}, all {dec_s / dec_steps * 1e3:.2f} ms (mean)")
    return median


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("logparse", "random", "decode"):
        raise SystemExit(__doc__)
    if argv[0] == "random":
        return run_random(argv[1:])
    if argv[0] == "decode":
        run_decode(argv[1:])
        return None
    from bench.logparse import stream as logparse

    with ForwardSplit() as split:
        t = time.perf_counter()
        logparse.main(argv[1:])
        wall = time.perf_counter() - t
    print(split.table(wall))  # wall includes model loading and workload building


if __name__ == "__main__":
    main()
