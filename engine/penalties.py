"""Repetition / frequency / presence penalties over a batch, sparse: only the tokens a request has seen are touched.

A penalty changes a row's logit only at tokens the request generated (all three) or had in its prompt
(repetition only), a few hundred of the vocabulary's 50-150k. So the state is a padded table per request-pool row
(`Req.req_pool_idx`) of the distinct tokens seen, with their output counts, and a step gathers
the logits at those (row, token) pairs, penalizes them and scatters them back: work O(tokens seen), not
O(batch x vocab). (Dense [B, V] penalties cost 20+ ms a step at batch 64 on a 2-core CPU, against a few ms
of forward budget; see docs/sampling.md.)

Rows are kept across steps: a step adds only the tokens a request generated since its last step. A row that
changed hands (a finished request's row reused, or a retracted request re-admitted on another row) is rebuilt
from the request's ids. Definitions of the penalties: engine/sampling_params.py.
"""
from __future__ import annotations

from collections.abc import Sequence
from itertools import accumulate

import torch

from engine.scheduler.request import Req


class PenaltyTable:
    """Per pool row: the distinct tokens seen `toks` [R, S] int64 and their output counts `counts` [R, S] fp32
    (0 for a token only the prompt held); entries past `lens[row]` are unused. S grows on demand (doubling)."""

    def __init__(self, num_rows: int, device: torch.device | str, capacity: int = 256):
        self.num_rows, self.device = num_rows, device
        self.toks = torch.zeros(num_rows, capacity, dtype=torch.int64, device=device)
        self.counts = torch.zeros(num_rows, capacity, dtype=torch.float32, device=device)
        self.lens = [0] * num_rows
        self._slot: list[dict[int, int]] = [{} for _ in range(num_rows)]  # token -> its slot, per row
        self._owner: list[tuple[str, int] | None] = [None] * num_rows  # (rid, output tokens counted)

    def update(self, reqs: Sequence[Req]) -> None:
        """Bring the rows of `reqs` up to their current output ids (and, for a new owner, its prompt)."""
        resets: list[int] = []
        taken: list[tuple[int, int, int]] = []  # (row, slot, token) of the slots taken this step
        counted: list[tuple[int, int]] = []  # (row, slot), one per generated token to count
        for req in reqs:
            row, out = req.req_pool_idx, req.output_ids
            owner = self._owner[row]
            start = owner[1] if owner is not None and owner[0] == req.rid else -1
            slot = self._slot[row]
            if start < 0:
                resets.append(row)
                slot.clear()
                start = 0
                if req.sampling.repetition_penalty != 1.0:  # the prompt's tokens are penalized too
                    for tok in req.input_ids:
                        if tok not in slot:
                            slot[tok] = len(slot)
                            taken.append((row, slot[tok], tok))
            for tok in out[start:]:
                s = slot.get(tok)
                if s is None:
                    s = slot[tok] = len(slot)
                    taken.append((row, s, tok))
                counted.append((row, s))
            self.lens[row] = len(slot)
            self._owner[row] = (req.rid, len(out))
        self._ensure_capacity(max(self.lens[r.req_pool_idx] for r in reqs) if reqs else 0)
        dev = self.device
        if resets:
            self.counts[torch.tensor(resets, dtype=torch.int64, device=dev)] = 0.0
        if taken:
            rows, slots, toks = zip(*taken)
            idx = (torch.tensor(rows, device=dev), torch.tensor(slots, device=dev))
            self.toks.index_put_(idx, torch.tensor(toks, dtype=torch.int64, device=dev))
        if counted:
            rows, slots = zip(*counted)
            idx = (torch.tensor(rows, device=dev), torch.tensor(slots, device=dev))
            self.counts.index_put_(idx, torch.ones(len(counted), device=dev), accumulate=True)

    def _ensure_capacity(self, needed: int) -> None:
        cap = self.toks.shape[1]
        if needed <= cap:
            return
        new_cap = max(needed, 2 * cap)
        for name in ("toks", "counts"):
            old = getattr(self, name)
            grown = torch.zeros(self.num_rows, new_cap, dtype=old.dtype, device=old.device)
            grown[:, :cap] = old
            setattr(self, name, grown)

    def apply(self, logits: torch.Tensor, batch_rows: list[int], reqs: list[Req]) -> None:
        """Penalize `logits` [B, V] in place: row batch_rows[i] with reqs[i]'s penalties (repetition first, then
        frequency, then presence, as engine/sampling_params.py defines them)."""
        self.update(reqs)
        dev = logits.device
        pool_rows = [r.req_pool_idx for r in reqs]
        # the entries of row i are slots [0, lens[i]) of its pool row: flatten them, row after row, to [N]
        lens_list = [self.lens[r] for r in pool_rows]
        n = sum(lens_list)
        if n == 0:
            return
        lens = torch.tensor(lens_list, dtype=torch.int64, device=dev)  # [P]

        def per_entry(values: list, dtype=torch.int64) -> torch.Tensor:  # one value per row -> one per entry [N]
            return torch.tensor(values, dtype=dtype, device=dev).repeat_interleave(lens, output_size=n)

        p_idx = per_entry(pool_rows)  # [N]
        slot_idx = torch.arange(n, device=dev) - per_entry(list(accumulate(lens_list[:-1], initial=0)))  # [N]
        b_idx = per_entry(batch_rows)  # [N]
        t_idx = self.toks[p_idx, slot_idx]  # [N]
        counts = self.counts[p_idx, slot_idx]  # [N]
        x = logits[b_idx, t_idx]  # [N]
        sps = [r.sampling for r in reqs]
        if any(sp.repetition_penalty != 1.0 for sp in sps):
            # every entry is a token the request generated or had in its prompt: all of them are penalized
            rep = per_entry([sp.repetition_penalty for sp in sps], x.dtype)
            x = x * torch.where(x > 0, rep.reciprocal(), rep)
        if any(sp.frequency_penalty != 0.0 for sp in sps):
            x = x - counts * per_entry([sp.frequency_penalty for sp in sps], x.dtype)
        if any(sp.presence_penalty != 0.0 for sp in sps):
            x = x - (counts > 0).to(x.dtype) * per_entry([sp.presence_penalty for sp in sps], x.dtype)
        logits.index_put_((b_idx, t_idx), x)

