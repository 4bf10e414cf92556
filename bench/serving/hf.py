"""The `hf` backend of `python -m bench.serving`: HF transformers in-process, padded batched `generate`.

Left padding with an attention mask, greedy, min_new_tokens = max_new_tokens (= ignore_eos) is HF's fastest CPU
mode; its continuous-batching `generate_batch` is slower on CPU, so it is not used (NOTE says so in the output).

Batching: whenever the model is free it takes, in arrival order, up to `max_batch` (= --max-concurrency) of the
requests that have arrived (waiting for the next arrival when none has), and generates them as one padded batch
of max(output_len) steps. A request is "sent" when its batch starts, like an HTTP request that has taken a
--max-concurrency slot (bench_serving starts its clock after the semaphore), so time spent waiting for a busy
model is not in its TTFT, exactly as for the HTTP backends.
Timing: a StoppingCriteria callback, which generate calls right after appending each step's tokens, records one
timestamp per step. Request i's TTFT is step 1's stamp minus its batch start, its latency is step
output_len[i]'s stamp (its last own token; the rows that need fewer steps are done, as a per-row streamer would
deliver them), and its ITLs are the gaps between its steps. No prefix cache: cached_tokens is 0.
"""
from __future__ import annotations

import time
from typing import Callable, Sequence

import torch

from bench.serving.data import BenchRequest
from bench.serving.metrics import RequestResult

NOTE = ("hf runs padded batched generate (left padding, greedy), its fastest CPU mode; transformers' "
        "generate_batch continuous batching is slower on CPU, so it is not used.")


class _StepClock:
    """A StoppingCriteria that never stops anything and timestamps every generated step."""

    def __init__(self):
        self.stamps: list[float] = []

    def __call__(self, input_ids, scores, **kwargs):
        self.stamps.append(time.perf_counter())
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


class HFBackend:
    notes = (NOTE,)

    def __init__(self, model_path: str, dtype: str = "auto"):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from engine.models.loader import resolve_dtype

        dtype = resolve_dtype(dtype) if dtype == "auto" else dtype  # the same dtype pairserve's "auto" serves in
        if not hasattr(torch, dtype) or not isinstance(getattr(torch, dtype), torch.dtype):
            raise ValueError(f"--dtype: not a torch dtype: {dtype!r}")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=getattr(torch, dtype)).eval()
        tok = AutoTokenizer.from_pretrained(model_path)
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.pad_id = 0 if pad is None else pad

    def generate(self, prompts: Sequence[Sequence[int]], steps: int) -> tuple[float, list[float]]:
        """One padded batch of exactly `steps` new tokens per row: (start time, one timestamp per step)."""
        from transformers import StoppingCriteriaList

        width = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for i, p in enumerate(prompts):  # left padding: every row's last prompt token is in the last column
            ids[i, width - len(p):] = torch.tensor(list(p), dtype=torch.long)
            mask[i, width - len(p):] = 1
        clock = _StepClock()
        start = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=steps, min_new_tokens=steps,
                                do_sample=False, pad_token_id=self.pad_id,
                                stopping_criteria=StoppingCriteriaList([clock]))
        if len(clock.stamps) != steps:
            raise RuntimeError(f"hf generate ran {len(clock.stamps)} steps, expected {steps}")
        return start, clock.stamps

    def prepare(self, requests: Sequence[BenchRequest], warmup: int, max_batch: int | None) -> None:
        """Warm-up, untimed: the first `warmup` (>= 1) requests as one batch of at most `max_batch`."""
        batch = requests[:max(1, min(warmup, max_batch or warmup))]
        self.generate([r.input_ids for r in batch], max(r.output_len for r in batch))

    def reset(self) -> None:
        """Between runs: nothing to do (generate keeps no state across batches)."""

    def run(self, requests: Sequence[BenchRequest], arrivals: Sequence[float], max_batch: int | None,
            results: list[RequestResult], t0: float, on_done: Callable[[int], None] = lambda n: None) -> None:
        """Serve `requests` (arrival offsets in seconds after t0); append each batch's results when it ends."""
        n, i = len(requests), 0
        cap = max_batch or n
        while i < n:
            wait = t0 + arrivals[i] - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            now = time.perf_counter() - t0
            j = i + 1
            while j < n and j - i < cap and arrivals[j] <= now:
                j += 1
            batch = requests[i:j]
            start, stamps = self.generate([r.input_ids for r in batch], max(r.output_len for r in batch))
            for r in batch:
                mine = stamps[:r.output_len]
                results.append(RequestResult(
                    True, prompt_len=r.prompt_len, output_len=r.output_len, ttft=mine[0] - start,
                    latency=mine[-1] - start, itl=[b - a for a, b in zip(mine, mine[1:])], cached_tokens=0,
                    send_time=start - t0, system=r.system))
            on_done(len(batch))
            i = j
