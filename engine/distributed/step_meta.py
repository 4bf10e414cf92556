"""One engine step's batch metadata as flat int64 tensors, broadcast from rank 0 to the other TP ranks.

Everything the model runner needs to build a ForwardBatch (engine/model_runner.py), and nothing else: no
Python objects cross (no pickle). Two broadcasts per step: a fixed-size header, then one body tensor
    [input_ids | prefix_lens | extend_lens | out_cache_loc | req_pool_indices | write rows | write starts |
     write lengths | write slots]
whose section lengths the header gives. An op code of STOP in the header ends a worker's loop.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.scheduler.batch import ForwardMode, ScheduledBatch, TableWrite

OP_STOP, OP_STEP = 0, 1
_MODES = list(ForwardMode)
HEADER_LEN = 8  # op, mode, num_extend, num_tokens, batch_size, num_writes, num_write_slots, reserved


@dataclass
class StepMeta:
    """The part of a ScheduledBatch the forward reads (same names, so the runner reads either)."""

    mode: ForwardMode
    num_extend: int
    input_ids: list[int]
    prefix_lens: list[int]
    extend_lens: list[int]
    out_cache_loc: list[int]
    req_pool_indices: list[int]
    table_writes: list[TableWrite]

    @property
    def batch_size(self) -> int:
        return len(self.prefix_lens)

    @classmethod
    def from_batch(cls, batch: ScheduledBatch) -> "StepMeta":
        return cls(batch.mode, batch.num_extend, batch.input_ids, batch.prefix_lens, batch.extend_lens,
                   batch.out_cache_loc, batch.req_pool_indices, batch.table_writes)

    def encode(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(header [HEADER_LEN], body [L]) int64 tensors on the CPU."""
        writes = self.table_writes
        body = [*self.input_ids, *self.prefix_lens, *self.extend_lens, *self.out_cache_loc, *self.req_pool_indices,
                *(w.row for w in writes), *(w.start for w in writes), *(len(w.slots) for w in writes),
                *(s for w in writes for s in w.slots)]
        header = [OP_STEP, _MODES.index(self.mode), self.num_extend, len(self.input_ids), self.batch_size,
                  len(writes), sum(len(w.slots) for w in writes), 0]
        return torch.tensor(header, dtype=torch.int64), torch.tensor(body, dtype=torch.int64)

    @staticmethod
    def body_len(header: list[int]) -> int:
        _, _, _, tokens, bsz, nwrites, nslots, _ = header
        return 2 * tokens + 3 * bsz + 3 * nwrites + nslots

    @classmethod
    def decode(cls, header: list[int], body: list[int]) -> "StepMeta":
        _, mode, num_extend, tokens, bsz, nwrites, nslots, _ = header
        pos = 0

        def take(n: int) -> list[int]:
            nonlocal pos
            pos += n
            return body[pos - n:pos]

        input_ids, prefix_lens, extend_lens = take(tokens), take(bsz), take(bsz)
        out_cache_loc, pool_idx = take(tokens), take(bsz)
        rows, starts, lens = take(nwrites), take(nwrites), take(nwrites)
        writes = [TableWrite(row, start, take(n)) for row, start, n in zip(rows, starts, lens)]
        assert pos == len(body), "step metadata body does not match its header"
        return cls(_MODES[mode], num_extend, input_ids, prefix_lens, extend_lens, out_cache_loc, pool_idx, writes)


def stop_header() -> torch.Tensor:
    return torch.tensor([OP_STOP] + [0] * (HEADER_LEN - 1), dtype=torch.int64)
