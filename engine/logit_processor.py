"""Per-request logit processing before sampling, batched: logit_bias, min_new_tokens, repetition / frequency /
presence penalties (engine/sampling_params.py has their definitions; engine/penalties.py keeps their token
counts), then grammar masks (engine/grammar.py).

Every operation is a few tensor ops over the (row, token) entries that need it; Python only gathers index lists.
Rows that sample nothing this step (a prefill chunk short of its prompt's end) are skipped.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from engine.grammar import GrammarMasks
from engine.penalties import PenaltyTable
from engine.scheduler.request import Req


class LogitProcessor:
    def __init__(self, max_rows: int, vocab_size: int, device: torch.device | str):
        self.vocab_size = vocab_size
        self.device = device
        self.penalties = PenaltyTable(max_rows, device)
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
            self.penalties.apply(logits, pen_idx, pen_reqs)
        if grammar_rows:
            if self.grammar_masks is None:
                self.grammar_masks = GrammarMasks(self._max_rows, self.vocab_size)
            self.grammar_masks.apply(logits, grammar_rows, grammar_states)
