"""Logprobs from a step's logits (engine/logprob_options.py has what is asked and their semantics).

`plan_logit_rows` picks the rows of the step's T tokens the model must project: every request's last token,
plus, for a prefill chunk whose request wants prompt logprobs, the chunk's positions whose next token is a
prompt token at or after logprob_start_len. `StepLogprobs` computes log_softmax over only the rows that asked
(raw logits, before any processing) and turns them into per-row `RowLogprobs` once the tokens are sampled.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.scheduler.batch import RowLogprobs, ScheduledBatch


@dataclass
class LogitRows:
    """Which logits a step computes. `index`: rows of the T tokens (None = each request's last token only);
    `last`: position of request i's last-token row in the model's output; `inputs`: per request, None or
    (first output row, number of rows, first predicted prompt-token position, whether a None entry for prompt
    token 0 leads)."""

    index: list[int] | None
    last: list[int]
    inputs: list[tuple[int, int, int, bool] | None]


def plan_logit_rows(batch: ScheduledBatch, starts: list[int], lasts: list[int]) -> LogitRows:
    """`starts` / `lasts`: each request's first / last new token in the T tokens."""
    inputs: list[tuple[int, int, int, bool] | None] = [None] * batch.batch_size
    extra = False
    for i in range(batch.num_extend):
        req = batch.reqs[i]
        if req.input_logprobs_done:
            continue
        s, p, e = req.logprob.logprob_start_len, batch.prefix_lens[i], batch.extend_lens[i]
        # position j's logits give the logprob of prompt token j + 1; tokens from max(s, 1) need positions
        # [max(s, 1) - 1, prompt_len - 1), of which this chunk holds [p, p + e)
        lo, hi = max(max(s, 1) - 1, p), min(p + e, req.prompt_len - 1)
        lead_none = s == 0 and not req.input_logprobs  # prompt token 0 has no context: entry [None, tok0]
        if hi > lo or lead_none:
            inputs[i] = (lo, max(hi - lo, 0), lo + 1, lead_none)
            extra = True
    if not extra:
        return LogitRows(None, list(range(batch.batch_size)), inputs)
    index, last = [], []
    for i in range(batch.batch_size):
        spec = inputs[i]
        if spec is not None:
            lo, n, first_tok, lead = spec
            t0 = starts[i] + (lo - batch.prefix_lens[i])
            inputs[i] = (len(index), n, first_tok, lead)
            index.extend(range(t0, t0 + n))
        last.append(len(index))
        index.append(lasts[i])
    return LogitRows(index, last, inputs)


class StepLogprobs:
    """Logprobs of one step for the rows that asked: prompt positions now, sampled tokens after sampling."""

    def __init__(self, batch: ScheduledBatch, rows: LogitRows, all_logits: torch.Tensor):
        """all_logits: the model's output [N, V] fp32 (rows as `rows.index`), before any processing."""
        self.batch, self.rows = batch, rows
        self.out: list[RowLogprobs | None] = [None] * batch.batch_size
        wanting = [i for i, r in enumerate(batch.reqs) if r.logprob is not None]
        self._input_rows(all_logits, wanting)
        self.sampled = [i for i in wanting if batch.sample[i]]
        self._out_logprobs = None
        if self.sampled:
            lasts = [rows.last[i] for i in self.sampled]
            if lasts == list(range(all_logits.shape[0])):  # every row, in order: no [S, V] gather copy
                src = all_logits
            else:
                src = all_logits[torch.tensor(lasts, dtype=torch.int64, device=all_logits.device)]
            self._out_logprobs = torch.log_softmax(src, dim=-1)  # [S, V], a new tensor: processing can't touch it

    def _input_rows(self, all_logits: torch.Tensor, wanting: list[int]) -> None:
        for i in wanting:
            spec = self.rows.inputs[i]
            if spec is None:
                continue
            req, (row0, n, first_tok, lead) = self.batch.reqs[i], spec
            top_n = req.logprob.top_logprobs_num
            lp = RowLogprobs()
            if lead:
                lp.input_token.append([None, req.input_ids[0]])
                lp.input_top.append(None)
            if n:
                logprobs = torch.log_softmax(all_logits[row0:row0 + n], dim=-1)  # [n, V]
                toks = req.input_ids[first_tok:first_tok + n]
                chosen = logprobs.gather(1, torch.tensor(toks, device=logprobs.device).unsqueeze(1)).squeeze(1)
                lp.input_token.extend([v, t] for v, t in zip(chosen.tolist(), toks))
                lp.input_top.extend(_tops(logprobs, top_n) if top_n else [None] * n)
            self.out[i] = lp

    def finish(self, next_ids: list[int]) -> list[RowLogprobs | None] | None:
        """Per-row logprobs once `next_ids` (one per row) are sampled; None when no row asked."""
        if not any(r.logprob is not None for r in self.batch.reqs):
            return None
        if self.sampled:
            lps = self._out_logprobs
            toks = [next_ids[i] for i in self.sampled]
            chosen = lps.gather(1, torch.tensor(toks, device=lps.device).unsqueeze(1)).squeeze(1).tolist()
            top_n = max(self.batch.reqs[i].logprob.top_logprobs_num for i in self.sampled)
            tops = _tops(lps, top_n) if top_n else None
            for k, i in enumerate(self.sampled):
                lp = self.out[i] or RowLogprobs()
                lp.output_token = [chosen[k], toks[k]]
                n_i = self.batch.reqs[i].logprob.top_logprobs_num
                lp.output_top = tops[k][:n_i] if n_i else None
                self.out[i] = lp
        return self.out


def _tops(logprobs: torch.Tensor, n: int) -> list[list[list]]:
    """Top-n [logprob, token id] pairs per row of `logprobs` [R, V], most likely first."""
    values, ids = logprobs.topk(n, dim=-1)
    return [[[v, t] for v, t in zip(vs, ts)] for vs, ts in zip(values.tolist(), ids.tolist())]
