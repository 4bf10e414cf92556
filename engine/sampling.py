"""Batched sampling of next tokens from logits: greedy, temperature, top-k, top-p, min-p.

Everything is vectorized over the batch except drawing the random noise, which comes from one
`torch.Generator` per row seeded from (request seed, output position). A seeded request therefore samples the
same token at the same position whatever else is in the batch and wherever its row sits. The sampler holds no
RNG state of its own; the caller gives every request a seed.

Sampling uses the exponential race: argmax_i(p_i / E_i) with E_i ~ Exp(1) i.i.d. picks token i with
probability p_i / sum(p), so filtered (zeroed) probabilities need no renormalization.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from engine.sampling_params import SamplingParams

_MASK64 = (1 << 64) - 1
# Top-p first looks at this many most likely tokens; real LM distributions put their nucleus well inside it.
TOP_P_PROBE_WIDTH = 512


def noise_seed(seed: int, output_pos: int) -> int:
    """Seed of the generator that draws a request's noise at one output position (a splitmix64 mix).

    Mixing, rather than seed + pos, keeps request seeds s and s + 1 from sharing shifted noise streams.
    """
    x = (seed & _MASK64) ^ (((output_pos + 1) * 0x9E3779B97F4A7C15) & _MASK64)
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True, eq=False)
class SamplingBatch:
    """Sampling parameters of one batch step as tensors. Build with `SamplingBatch.build`.

    Flags (`any_*`) describe the sampled (non-greedy) rows only, so `sample` can skip unused filters.
    """

    temperatures: torch.Tensor  # [B, 1] fp32; 1.0 on greedy rows, which never divide by it
    top_ps: torch.Tensor  # [B] fp32
    top_ks: torch.Tensor  # [B] int64; -1 = off
    min_ps: torch.Tensor  # [B] fp32
    is_greedy: torch.Tensor  # [B] bool
    sampled_rows: torch.Tensor  # [S] int64, indices of the non-greedy rows
    noise_seeds: tuple[int, ...]  # [S] generator seed per sampled row for this step
    all_greedy: bool
    any_greedy: bool
    any_top_k: bool
    any_top_p: bool
    any_min_p: bool
    # Top-k bound shared by all sampled rows (max of their top_k), or None when some row needs the full vocab.
    max_top_k: int | None

    @property
    def batch_size(self) -> int:
        return self.top_ps.shape[0]

    @classmethod
    def build(cls, params: Sequence[SamplingParams], output_lens: Sequence[int], seeds: Sequence[int],
              device: torch.device | str = "cpu") -> "SamplingBatch":
        """params, output_lens (tokens each request has generated so far), seeds (each request's base seed,
        assigned by the caller where the request gave none): one entry per batch row, in row order.
        Params must already be validated."""
        assert len(params) == len(output_lens) == len(seeds) > 0, "one entry per row, at least one row"
        greedy = [p.is_greedy for p in params]
        sampled = [i for i, g in enumerate(greedy) if not g]
        sampled_params = [params[i] for i in sampled]
        top_k_on = [p.top_k > 0 for p in sampled_params]
        return cls(
            temperatures=torch.tensor([[1.0 if g else p.temperature] for p, g in zip(params, greedy)],
                                      dtype=torch.float32, device=device),
            top_ps=torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device),
            top_ks=torch.tensor([p.top_k for p in params], dtype=torch.int64, device=device),
            min_ps=torch.tensor([p.min_p for p in params], dtype=torch.float32, device=device),
            is_greedy=torch.tensor(greedy, dtype=torch.bool, device=device),
            sampled_rows=torch.tensor(sampled, dtype=torch.int64, device=device),
            noise_seeds=tuple(noise_seed(seeds[i], output_lens[i]) for i in sampled),
            all_greedy=not sampled,
            any_greedy=len(sampled) < len(params),
            any_top_k=any(top_k_on),
            any_top_p=any(p.top_p < 1.0 for p in sampled_params),
            any_min_p=any(p.min_p > 0.0 for p in sampled_params),
            max_top_k=max(p.top_k for p in sampled_params) if sampled and all(top_k_on) else None,
        )


def sample(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Next token per row. logits: [B, V], any float dtype, on the batch's device. Returns int64 [B]."""
    assert logits.dim() == 2 and logits.shape[0] == batch.batch_size, "logits must be [B, V]"
    if batch.all_greedy:
        return logits.argmax(dim=-1)
    rows = batch.sampled_rows
    if batch.any_greedy:
        # advanced indexing rather than index_select, which runs pathologically slowly on a busy 2-core CPU
        # (engine/logit_processor.py has the numbers)
        sampled_logits = logits[rows]  # [S, V]
        temperatures, top_ks, top_ps, min_ps = (t[rows] for t in
                                                (batch.temperatures, batch.top_ks, batch.top_ps, batch.min_ps))
    else:
        sampled_logits = logits
        temperatures, top_ks, top_ps, min_ps = batch.temperatures, batch.top_ks, batch.top_ps, batch.min_ps

    probs = torch.softmax(sampled_logits.float() / temperatures, dim=-1)  # [S, V] fp32
    if batch.any_top_k or batch.any_top_p:
        probs = _filter_top_k_top_p(probs, top_ks, top_ps, batch.max_top_k, batch.any_top_p)
    if batch.any_min_p:
        # The row's max always survives top-k/top-p, so the threshold is the same before or after them.
        threshold = probs.amax(dim=-1, keepdim=True) * min_ps.unsqueeze(1)  # [S, 1]
        probs = probs.masked_fill(probs < threshold, 0.0)

    noise = _exponential_noise(batch.noise_seeds, probs.shape[1], probs.device)  # [S, V]
    sampled_ids = (probs / noise).argmax(dim=-1)  # [S]
    if not batch.any_greedy:
        return sampled_ids
    out = logits.argmax(dim=-1)  # [B]
    out.index_copy_(0, rows, sampled_ids)
    return out


def _filter_top_k_top_p(probs: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor,
                        max_top_k: int | None, any_top_p: bool) -> torch.Tensor:
    """Zero the probabilities outside each row's top-k, then outside its top-p nucleus of what is left.

    probs: [S, V]; top_ks [S] (-1 = off); top_ps [S]. Sorting the whole vocab is ~20x dearer than taking the
    top few hundred, so look at a window of the most likely tokens first (max_top_k when every row bounds k,
    else a probe that holds the nucleus of any peaked distribution) and sort the whole vocab only for rows
    whose kept set the window did not hold.
    """
    vocab_size = probs.shape[1]
    if max_top_k is not None and max_top_k < vocab_size:
        window = max_top_k
    elif any_top_p:
        window = min(TOP_P_PROBE_WIDTH, vocab_size)
    else:
        window = vocab_size
    if window < vocab_size:
        filtered, complete = _filter_in_window(probs, top_ks, top_ps, window, any_top_p)
        if bool(complete.all()):
            return filtered
        redo = (~complete).nonzero().squeeze(1)  # [R] rows whose kept set reaches past the window
        filtered[redo] = _filter_in_window(probs[redo], top_ks[redo], top_ps[redo], vocab_size, any_top_p)[0]
        return filtered
    return _filter_in_window(probs, top_ks, top_ps, vocab_size, any_top_p)[0]


def _filter_in_window(probs: torch.Tensor, top_ks: torch.Tensor, top_ps: torch.Tensor, window: int,
                      any_top_p: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Filter every row looking only at its `window` most likely tokens, zeroing the rest when the row has a
    filter. Returns (filtered probs [S, V], complete [S] bool: the window held the row's whole kept set)."""
    vocab_size = probs.shape[1]
    if window < vocab_size:
        sorted_probs, sorted_ids = probs.topk(window, dim=-1, sorted=True)  # [S, W] descending
    else:
        sorted_probs, sorted_ids = probs.sort(dim=-1, descending=True)  # [S, V]
    k_off = (top_ks < 0) | (top_ks >= vocab_size)  # [S]
    k_in_window = ~k_off & (top_ks <= window)
    top_p_on = top_ps < 1.0
    ranks = torch.arange(window, device=probs.device)  # [W]
    k = torch.where(k_in_window, top_ks, window)  # [S]
    sorted_probs = sorted_probs.masked_fill(ranks.unsqueeze(0) >= k.unsqueeze(1), 0.0)
    complete = k_in_window | (window == vocab_size)
    if any_top_p:
        cumulative = sorted_probs.cumsum(dim=-1)  # [S, W]
        # top-p is relative to the mass top-k left: the top-k mass, or the whole row when k is off.
        kept_mass = torch.where(k_in_window, cumulative[:, -1], probs.sum(dim=-1)).unsqueeze(1)  # [S, 1]
        nucleus_mass = top_ps.unsqueeze(1) * kept_mass  # [S, 1]
        # Keep the smallest prefix reaching top_p: drop a token once the mass before it already does. Rows with
        # top_p == 1 are left alone so rounding in the cumsum cannot drop their tail.
        drop = ((cumulative - sorted_probs) >= nucleus_mass) & top_p_on.unsqueeze(1)
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        # With k off, the window is exact once its mass reaches the nucleus: every token after it is dropped.
        complete = complete | (k_off & top_p_on & (cumulative[:, -1:] >= nucleus_mass).squeeze(1))
    filtered = torch.zeros_like(probs).scatter_(1, sorted_ids, sorted_probs)
    # Rows with no filter at all keep their full distribution (the window would have cut them).
    has_filter = ~k_off | top_p_on  # [S]
    return torch.where(has_filter.unsqueeze(1), filtered, probs), complete | ~has_filter


def _exponential_noise(seeds: Sequence[int], vocab_size: int, device: torch.device) -> torch.Tensor:
    """[S, V] fp32 Exp(1) noise as -log(U), row i drawn from a generator seeded with seeds[i], so a row does not
    depend on the batch around it. (uniform_ + log is ~6x faster than exponential_ on CPU.) U = 0 gives an
    infinite E, which only rules that one token out with probability 2^-24; the clamp guards the other end,
    where E = 0 would turn a filtered 0 into 0/0 = NaN, which argmax picks."""
    noise = torch.empty(len(seeds), vocab_size, dtype=torch.float32, device=device)
    for row, seed in enumerate(seeds):
        generator = torch.Generator(device=device)
        generator.manual_seed(seed)
        noise[row].uniform_(generator=generator)
    return noise.log_().neg_().clamp_min_(torch.finfo(torch.float32).tiny)
