"""The engine step shared by `Engine` and the server's scheduler process: schedule → run → process results.

I/O is not here: callers feed requests in with `add`/`abort` and take `StepOutput`s from `step()`.
"""
from __future__ import annotations

import random

from engine.config import ServerArgs
from engine.model_runner import ModelRunner
from engine.sampling_params import SamplingParams
from engine.pair.render import IclPrompt
from engine.scheduler import Req, Scheduler, StepOutput


class EngineLoop:
    def __init__(self, args: ServerArgs, model_path: str, tokenizer):
        self.args = args
        self.runner = ModelRunner(args, model_path)
        self.tokenizer = tokenizer
        self.context_len = self.runner.context_len
        self.scheduler = Scheduler(args, self.runner.num_slots, self.context_len, self._decode_tail)
        self.eos_token_ids = self._eos_ids(tokenizer)
        self._rng = random.Random(args.seed)

    def _decode_tail(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def _eos_ids(self, tokenizer) -> tuple[int, ...]:
        ids = set(self.runner.model_config.eos_token_ids)
        if getattr(tokenizer, "eos_token_id", None) is not None:
            ids.add(tokenizer.eos_token_id)
        return tuple(sorted(ids))

    def add(self, rid: str, input_ids: list[int], sampling: SamplingParams, icl: IclPrompt | None = None) -> None:
        """Queue one request. Raises ValueError (naming the field) if it cannot run; nothing is queued then.

        With `icl`, input_ids is its unrefined assembly; PAIR may rewrite it when the request is admitted."""
        sampling.validate()
        seed = sampling.seed if sampling.seed is not None else self._rng.getrandbits(63)
        req = Req(rid=rid, input_ids=list(input_ids), sampling=sampling, eos_token_ids=self.eos_token_ids,
                  seed=seed, icl=icl)
        self.scheduler.add(req)

    def abort(self, rid: str) -> None:
        self.scheduler.abort(rid)

    def has_work(self) -> bool:
        return self.scheduler.has_work()

    def step(self) -> list[StepOutput]:
        batch = self.scheduler.schedule()
        next_ids = self.runner.run(batch) if batch is not None else None
        return self.scheduler.process_results(batch, next_ids)
