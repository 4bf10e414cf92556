"""What the scheduler hands the model runner for one step, and what comes back (pure Python)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from engine.scheduler.request import Req


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill chunks (new tokens attend to a cached prefix and causally to themselves)
    DECODE = "decode"  # exactly one new token per request


@dataclass
class TableWrite:
    """Positions [start, start + len(slots)) of req_to_token row `row` are set to `slots`."""

    row: int
    start: int
    slots: list[int]


@dataclass
class ScheduledBatch:
    """One forward step.

    Per request i: the new tokens are fill_ids[prefix_lens[i] : prefix_lens[i] + extend_lens[i]]; their K/V go
    to the slots out_cache_loc[start_i : start_i + extend_lens[i]]. `sample[i]` is False for a prefill chunk
    that does not reach the end of its prompt (its logits are not used).
    """

    mode: ForwardMode
    reqs: list[Req]
    input_ids: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    out_cache_loc: list[int]
    table_writes: list[TableWrite]
    sample: list[bool]
    # requests retracted or finished while building this batch (reported by process_results)
    side_outputs: list = field(default_factory=list)

    @property
    def batch_size(self) -> int:
        return len(self.reqs)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def check(self) -> None:
        assert len(self.reqs) == len(self.prefix_lens) == len(self.extend_lens) == len(self.sample)
        assert sum(self.extend_lens) == len(self.input_ids) == len(self.out_cache_loc)
        if self.mode is ForwardMode.DECODE:
            assert all(n == 1 for n in self.extend_lens)


@dataclass
class StepOutput:
    """Per-request delta after a step: new token ids, and the finish reason once finished."""

    rid: str
    new_token_ids: list[int]
    finished: bool
    finish_reason: dict | None
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    first_token_time: float | None = None
    extra: dict | None = None
