"""Per-request logit processing before sampling, batched: logit_bias, min_new_tokens, repetition / frequency /
presence penalties (engine/sampling_params.py has their definitions), then grammar masks (engine/grammar.py).

Every operation is a few tensor ops over the rows that need it; Python only gathers index lists. Token counts
for the penalties live in `PenaltyCounts`, one row per request-pool row (`Req.req_pool_idx`), kept across steps:
a step adds only the tokens a request generated since its last step, and a row that changed hands (a finished
request's row reused, or a retracted request re-admitted on another row) is rebuilt from the request's ids.
Rows that sample nothing this step (a prefill chunk short of its prompt's end) are skipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.grammar import GrammarMasks
from engine.scheduler.request import Req


class PenaltyCounts:
    """Output-token counts [R, V] fp32 and prompt-token presence [R, V] bool per request-pool row, made on the
    first request that asks for a penalty."""

    def __init__(self, num_rows: int, vocab_size: int, device: torch.device | str):
        self.num_rows, self.vocab_size, self.device = num_rows, vocab_size, device
        self.counts: torch.Tensor | None = None
        self.prompt_seen: torch.Tensor | None = None
        self._owner: list[tuple[str, int] | None] = [None] * num_rows  # (rid, output tokens counted)

    def update(self, reqs: Sequence[Req]) -> torch.Tensor:
        """Bring the rows of `reqs` up to their current output ids; returns their pool rows (int64 [P])."""
        if self.counts is None:
            self.counts = torch.zeros(self.num_rows, self.vocab_size, dtype=torch.float32, device=self.device)
            self.prompt_seen = torch.zeros(self.num_rows, self.vocab_size, dtype=torch.bool, device=self.device)
        resets, add_rows, add_toks, seen_rows, seen_toks = [], [], [], [], []
        for req in reqs:
            row, out = req.req_pool_idx, req.output_ids
            owner = self._owner[row]
            start = owner[1] if owner is not None and owner[0] == req.rid else -1
            if start < 0:
                resets.append(row)
                start = 0
                if req.sampling.repetition_penalty != 1.0:
                    seen_rows.extend([row] * len(req.input_ids))
                    seen_toks.extend(req.input_ids)
            if len(out) > start:
                add_rows.extend([row] * (len(out) - start))
                add_toks.extend(out[start:])
            self._owner[row] = (req.rid, len(out))
        dev = self.device
        if resets:
            reset = torch.tensor(resets, dtype=torch.int64, device=dev)
            self.counts[reset] = 0.0
            self.prompt_seen[reset] = False
        if seen_rows:
            idx = (torch.tensor(seen_rows, device=dev), torch.tensor(seen_toks, device=dev))
            self.prompt_seen.index_put_(idx, torch.ones((), dtype=torch.bool, device=dev))
        if add_rows:
            idx = (torch.tensor(add_rows, device=dev), torch.tensor(add_toks, device=dev))
            self.counts.index_put_(idx, torch.ones(len(add_rows), device=dev), accumulate=True)
        return torch.tensor([r.req_pool_idx for r in reqs], dtype=torch.int64, device=dev)


class LogitProcessor:
    def __init__(self, max_rows: int, vocab_size: int, device: torch.device | str):
        self.vocab_size = vocab_size
        self.device = device
        self.penalty_counts = PenaltyCounts(max_rows, vocab_size, device)
        self.grammar_masks: GrammarMasks | None = None
        self._max_rows = max_rows

    def apply(self, logits: torch.Tensor, reqs: Sequence[Req], sample: Sequence[bool]) -> None:
        """Process `logits` [B, V] (row i = reqs[i]) in place for the rows that sample and ask for anything."""
        bias_rows, bias_toks, bias_vals, ban_rows, ban_toks = [], [], [], [], []
        pen_idx, pen_reqs, grammar_rows, grammar_states = [], [], [], []
        for i, (req, do_sample) in enumerate(zip(reqs, sample)):
            sp = req.sampling
            if not do_sample:
                continue
            if sp.logit_bias:
                bias_rows.extend([i] * len(sp.logit_bias))
                bias_toks.extend(t for t, _ in sp.logit_bias)
                bias_vals.extend(b for _, b in sp.logit_bias)
            if len(req.output_ids) < sp.min_new_tokens:
                stops = set(sp.stop_token_ids) if sp.ignore_eos else set(sp.stop_token_ids) | set(req.eos_token_ids)
                ban_rows.extend([i] * len(stops))
                ban_toks.extend(stops)
            if sp.has_penalties:
                pen_idx.append(i)
                pen_reqs.append(req)
            if req.grammar is not None:
                grammar_rows.append(i)
                grammar_states.append(req.grammar)
        dev = logits.device
        if bias_rows:
            idx = (torch.tensor(bias_rows, device=dev), torch.tensor(bias_toks, device=dev))
            logits.index_put_(idx, torch.tensor(bias_vals, dtype=logits.dtype, device=dev), accumulate=True)
        if ban_rows:
            idx = (torch.tensor(ban_rows, device=dev), torch.tensor(ban_toks, device=dev))
            logits.index_put_(idx, torch.tensor(float("-inf"), dtype=logits.dtype, device=dev))
        if pen_reqs:
            self._penalize(logits, pen_idx, pen_reqs)
        if grammar_rows:
            if self.grammar_masks is None:
                self.grammar_masks = GrammarMasks(self._max_rows, self.vocab_size)
            self.grammar_masks.apply(logits, grammar_rows, grammar_states)

    def _penalize(self, logits: torch.Tensor, batch_rows: list[int], reqs: list[Req]) -> None:
        pool_rows = self.penalty_counts.update(reqs)
        dev = logits.device
        whole = len(batch_rows) == logits.shape[0]  # every row penalized: work on logits itself
        rows = None if whole else torch.tensor(batch_rows, dtype=torch.int64, device=dev)
        # (advanced indexing, not index_select: on a 2-core CPU with another process busy, index_select of
        # [64, 49152] rows took 170-750 ms against 10-15 ms for this)
        x = logits if whole else logits[rows]  # [P, V]; updated in place below (a copy unless whole)
        counts = self.penalty_counts.counts[pool_rows]  # [P, V]
        present = counts > 0
        sps = [r.sampling for r in reqs]
        if any(sp.repetition_penalty != 1.0 for sp in sps):
            rep = torch.tensor([[sp.repetition_penalty] for sp in sps], dtype=x.dtype, device=dev)  # [P, 1]
            factor = torch.where(x > 0, rep.reciprocal(), rep)  # [P, V]
            factor.masked_fill_(~(present | self.penalty_counts.prompt_seen[pool_rows]), 1.0)  # unseen: as is
            x.mul_(factor)
        if any(sp.frequency_penalty != 0.0 for sp in sps):
            freq = torch.tensor([[sp.frequency_penalty] for sp in sps], dtype=x.dtype, device=dev)
            x.addcmul_(counts, freq, value=-1.0)
        if any(sp.presence_penalty != 0.0 for sp in sps):
            pres = torch.tensor([[sp.presence_penalty] for sp in sps], dtype=x.dtype, device=dev)
            x.addcmul_(present.to(x.dtype), pres, value=-1.0)
        if not whole:
            logits[rows] = x
