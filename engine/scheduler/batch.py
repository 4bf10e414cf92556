"""What the scheduler hands the model runner for one step, and what comes back (pure Python)."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.forward_mode import ForwardMode, default_num_extend
from engine.scheduler.request import Req


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
    that does not reach the end of its prompt (its logits are not used). The first `num_extend` requests are
    prefill (EXTEND and MIXED), the rest decode one token each (DECODE and MIXED).
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
    num_extend: int = -1  # set from the mode unless MIXED, which must give it

    def __post_init__(self) -> None:
        if self.num_extend < 0:
            self.num_extend = default_num_extend(self.mode, len(self.reqs))

    @property
    def batch_size(self) -> int:
        return len(self.reqs)

    @property
    def num_tokens(self) -> int:
        return len(self.input_ids)

    def check(self) -> None:
        assert len(self.reqs) == len(self.prefix_lens) == len(self.extend_lens) == len(self.sample)
        assert sum(self.extend_lens) == len(self.input_ids) == len(self.out_cache_loc)
        assert 0 <= self.num_extend <= len(self.reqs)
        assert all(n == 1 for n in self.extend_lens[self.num_extend:])
        assert self.mode is not ForwardMode.MIXED or 0 < self.num_extend < len(self.reqs)


def build_extend(picked: list[tuple[Req, int]]) -> ScheduledBatch:
    """An EXTEND batch: for each (request, take), its next `take` prompt tokens (slots already reserved)."""
    reqs, input_ids, prefix_lens, extend_lens, locs, writes, sample = [], [], [], [], [], [], []
    for req, take in picked:
        start = req.kv_len
        reqs.append(req)
        input_ids.extend(req.fill_ids[start:start + take])
        prefix_lens.append(start)
        extend_lens.append(take)
        locs.extend(req.slots[start:start + take])
        end = start + take
        writes.append(TableWrite(req.req_pool_idx, req.table_len, req.slots[req.table_len:end]))
        sample.append(end == req.seq_len)
    return ScheduledBatch(ForwardMode.EXTEND, reqs, input_ids, prefix_lens, extend_lens, locs, writes, sample)


def append_decode(batch: ScheduledBatch, reqs: list[Req]) -> None:
    """Append one new token per request (its slot already reserved) to `batch`."""
    for r in reqs:
        batch.reqs.append(r)
        batch.input_ids.append(r.fill_ids[r.kv_len])
        batch.prefix_lens.append(r.kv_len)
        batch.extend_lens.append(1)
        batch.out_cache_loc.append(r.slots[r.kv_len])
        batch.table_writes.append(TableWrite(r.req_pool_idx, r.table_len, r.slots[r.table_len:r.kv_len + 1]))
        batch.sample.append(True)


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
