"""Timed prefill and decode steps of a loaded ModelRunner, driven by the engine's own Scheduler (no threads, so
each forward is timed alone), and the bytes a decode step reads for the weights."""
from __future__ import annotations

import time

import torch

from engine.config import ServerArgs
from engine.model_runner import ModelRunner
from engine.models.layers import BucketedLinear
from engine.models.quant import QuantizedLinear
from engine.sampling_params import SamplingParams
from engine.scheduler import Req, Scheduler
from engine.forward_mode import ForwardMode

FIRST_TOKEN, LAST_TOKEN = 10, 8000  # ids the real-size presets' BPE (8,192) knows; capped at the model's vocab


def model_weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every linear's stored weight (quantized values + scales, or the dense matrix): what one decode
    step reads at least, besides K/V and a few embedding rows. A prepacked dense weight counts at its shape."""
    total = 0
    for m in model.modules():
        if isinstance(m, QuantizedLinear):
            total += m.weight_bytes()
        elif isinstance(m, BucketedLinear):
            total += m.in_features * m.out_features * m.weight.element_size()
    return total


def _scheduler(runner: ModelRunner, args: ServerArgs) -> Scheduler:
    return Scheduler(args, runner.num_slots, runner.context_len, lambda ids: "")


def _tokens(runner: ModelRunner, n: int, gen: torch.Generator) -> list[int]:
    high = min(LAST_TOKEN, runner.model_config.vocab_size)
    return torch.randint(FIRST_TOKEN, high, (n,), generator=gen).tolist()


def _run(sch: Scheduler, runner: ModelRunner, timed_mode: ForwardMode | None = None) -> list[float]:
    """Step until the scheduler is idle; return the seconds of each step in `timed_mode`."""
    seconds = []
    while sch.has_work():
        batch = sch.schedule()
        t = time.perf_counter()
        result = runner.run(batch) if batch is not None else None
        if batch is not None and batch.mode is timed_mode:
            seconds.append(time.perf_counter() - t)
        if result is None:
            sch.process_results(None, None)
        else:
            sch.process_results(batch, result.next_ids, result.logprobs)
    return seconds


def prefill_step_seconds(runner: ModelRunner, args: ServerArgs, chunk: int, repeats: int) -> float:
    """Best seconds of one `chunk`-token prefill step (a fresh random prompt each time, radix cache off), after
    one warm-up step."""
    sch = _scheduler(runner, args.replace(disable_radix_cache=True, chunked_prefill_size=chunk,
                                          max_prefill_tokens=chunk))
    gen = torch.Generator().manual_seed(0)
    best = float("inf")
    for i in range(repeats + 1):
        sch.add(Req(rid=f"prefill-{i}", input_ids=_tokens(runner, chunk, gen),
                    sampling=SamplingParams(max_new_tokens=1, temperature=0, ignore_eos=True)))
        steps = _run(sch, runner, ForwardMode.EXTEND)
        if i:
            best = min(best, *steps)
    return best


def cached_prefix(runner: ModelRunner, args: ServerArgs, context: int) -> tuple[Scheduler, list[int]]:
    """A scheduler (radix cache on) whose tree holds one prefilled `context`-token random prompt, and the prompt."""
    sch = _scheduler(runner, args)
    prefix = _tokens(runner, context, torch.Generator().manual_seed(1))
    sch.add(Req(rid="prefix", input_ids=prefix, sampling=SamplingParams(max_new_tokens=1, temperature=0)))
    _run(sch, runner)
    return sch, prefix


def decode_step_seconds(runner: ModelRunner, sch: Scheduler, prefix: list[int], batch: int,
                        steps: int) -> list[float]:
    """Seconds of each decode step of `batch` requests with len(prefix) tokens of context each: their prompts
    are the cached prefix's first len - 1 tokens plus a token of their own, so the radix cache serves the prefix
    and one token each is computed before decoding."""
    for i in range(batch):
        sch.add(Req(rid=f"decode-{batch}-{i}", input_ids=prefix[:-1] + [FIRST_TOKEN + i],
                    sampling=SamplingParams(max_new_tokens=steps + 1, temperature=0, ignore_eos=True)))
    return _run(sch, runner, ForwardMode.DECODE)
