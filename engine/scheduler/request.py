"""A request as the scheduler sees it: ids and lengths only (pure Python).

Length names, all in tokens:
- `prompt_len`: len(input_ids); `fill_ids` = input_ids + output_ids (what the KV must cover, except the newest token)
- `kv_len`: leading fill_ids whose K/V sit in the pool (cached prefix + computed so far)
- `cached_len`: of those, how many came from the radix cache at admission
- `extend_len` (per step): tokens computed this step = fill_ids[kv_len : kv_len + extend_len]
- `table_len`: leading positions of the request's req_to_token row already written by the model runner
"""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

from engine.sampling_params import SamplingParams


class ReqStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


class FinishKind(enum.Enum):
    STOP = "stop"  # eos, a stop token or a stop string
    LENGTH = "length"  # max_new_tokens or the context limit
    ABORT = "abort"  # client abort or an engine error for this request


@dataclass(frozen=True)
class FinishReason:
    kind: FinishKind
    matched: int | str | None = None  # the stop token id or stop string
    message: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind.value, "matched": self.matched, "message": self.message}


@dataclass(frozen=True)
class Segments:
    """ICL segment layout of a prompt: token offsets where blocks end, and an id per example block.

    `boundaries` are increasing offsets into input_ids (end of the instruction block, of each example);
    `segment_ids` maps an offset in `boundaries` to the id of the example block that ends there.
    """

    boundaries: tuple[int, ...] = ()
    segment_ids: tuple[tuple[int, str], ...] = ()


@dataclass(eq=False)
class Req:
    rid: str
    input_ids: list[int]
    sampling: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    seed: int = 0
    segments: Segments | None = None
    icl: Any = None  # engine.pair.render.IclPrompt for ICL requests; PAIR rewrites input_ids at admission
    logprob: Any = None  # engine.logprob_options.LogprobOptions when logprobs are asked
    priority: int = 0  # higher first, with enable_priority_scheduling (policy.py)
    # engine.grammar.GrammarState for a constrained request: admitted once `ready`, finished once `terminated`
    grammar: Any = None
    tenant: str = "anonymous"  # whose PAIR state (and, with isolate_prefix_cache, whose radix namespace) it uses
    arrival_time: float = field(default_factory=time.monotonic)
    # generation state
    output_ids: list[int] = field(default_factory=list)
    status: ReqStatus = ReqStatus.WAITING
    finish_reason: FinishReason | None = None
    # KV state (owned by the scheduler's KV manager)
    req_pool_idx: int | None = None
    slots: list[int] = field(default_factory=list)  # allocated slots, whole pages; first kv_len are filled
    kv_len: int = 0
    table_len: int = 0
    cached_len: int = 0
    reported_cached_len: int | None = None  # cached_len at first admission: what the client is told
    last_node: Any = None  # locked radix node, or None
    num_retractions: int = 0
    first_token_time: float | None = None
    finish_time: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. ICL meta for the response
    # prompt logprobs: [logprob | None, token id] per prompt token from logprob_start_len, and its top-n (or
    # None), collected over prefill chunks and reported with the first output token
    input_logprobs: list[list] = field(default_factory=list)
    input_top_logprobs: list[list | None] = field(default_factory=list)
    input_logprobs_reported: bool = False

    @property
    def prompt_len(self) -> int:
        return len(self.input_ids)

    @property
    def fill_ids(self) -> list[int]:
        return self.input_ids + self.output_ids

    @property
    def seq_len(self) -> int:
        return len(self.input_ids) + len(self.output_ids)

    @property
    def pending_len(self) -> int:
        """Tokens whose K/V still have to be computed before the next token can be sampled."""
        return self.seq_len - self.kv_len

    @property
    def remaining_new_tokens(self) -> int:
        return max(self.sampling.max_new_tokens - len(self.output_ids), 0)

    @property
    def cache_limit(self) -> int | None:
        """Longest prefix this request may take from the radix cache, or None for no limit. Prompt positions
        whose logits its prompt logprobs still need are computed, never matched (a cached prefix has no logits):
        the logprob of token i comes from position i - 1's logits."""
        lp = self.logprob
        if lp is None or not lp.wants_input or self.input_logprobs_done:
            return None
        return max(lp.logprob_start_len - 1, 0)

    @property
    def input_logprobs_done(self) -> bool:
        lp = self.logprob
        return lp is None or not lp.wants_input or len(self.input_logprobs) >= self.prompt_len - lp.logprob_start_len

    @property
    def finished(self) -> bool:
        return self.status is ReqStatus.FINISHED
