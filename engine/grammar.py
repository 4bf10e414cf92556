"""Structured output with xgrammar: `json_schema`, `regex` and `ebnf` sampling params (and OpenAI's
`response_format`, which the server maps onto them).

- `validate_grammar` parses a spec without the tokenizer (milliseconds) when the request comes in, so a bad
  schema, regex or grammar is a ValueError naming the field (HTTP 400) before anything is queued.
- `GrammarBackend` compiles specs against the tokenizer on its own worker thread, off the step loop, caching
  each compiled grammar by (kind, spec); a request holds a `GrammarState` and the scheduler admits it only once
  the compilation is `ready` (engine/scheduler/scheduler.py).
- Each step the model runner asks every constrained row's matcher for its token bitmask and applies it to those
  rows' logits only (`apply_grammar_masks`); rows without a grammar are not touched. After sampling it feeds
  the token to the matcher; once the grammar accepts no more tokens the request finishes (`terminated`).
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor

import torch

logger = logging.getLogger(__name__)

GRAMMAR_KINDS = ("json_schema", "regex", "ebnf")


def _xgr():
    import xgrammar

    return xgrammar


def validate_grammar(kind: str, spec: str) -> None:
    """ValueError `sampling_params.<kind>: ...` unless `spec` parses as that kind of grammar."""
    xgr = _xgr()
    try:
        if kind == "json_schema":
            json.loads(spec)
            xgr.Grammar.from_json_schema(spec)
        elif kind == "regex":
            xgr.Grammar.from_regex(spec)
        elif kind == "ebnf":
            xgr.Grammar.from_ebnf(spec)
        else:
            raise ValueError(f"unknown grammar kind {kind!r}")
    except Exception as e:  # xgrammar raises RuntimeError / its own errors on bad input
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"sampling_params.{kind}: invalid ({first})") from None


class GrammarState:
    """One request's grammar: the compilation it waits for, then its matcher (made on first use)."""

    def __init__(self, compiled: Future):
        self._compiled = compiled
        self._matcher = None
        self.error: str | None = None  # set when compilation failed or the matcher rejected a sampled token

    @property
    def ready(self) -> bool:
        """Compilation finished (successfully or not: see `error`)."""
        if not self._compiled.done():
            return False
        if self.error is None and self._compiled.exception() is not None:
            self.error = f"grammar compilation failed: {self._compiled.exception()}"
        return True

    def wait(self, timeout_s: float) -> None:
        """Block up to timeout_s for the compilation (the engine loop, when nothing else can run)."""
        try:
            self._compiled.exception(timeout=timeout_s)
        except TimeoutError:
            pass

    @property
    def matcher(self):
        if self._matcher is None:
            self._matcher = _xgr().GrammarMatcher(self._compiled.result())
        return self._matcher

    @property
    def terminated(self) -> bool:
        """No token may follow (the grammar accepted a stop token), or the matcher failed."""
        return self.error is not None or (self._matcher is not None and self._matcher.is_terminated())

    def accept(self, token: int) -> None:
        if not self.matcher.accept_token(token):
            self.error = f"grammar: sampled token {token} is not allowed (no token satisfied every constraint)"


MAX_JSON_WHITESPACE = 16  # whitespace characters allowed between two JSON tokens (pretty-printing fits)


class GrammarBackend:
    """Compiles grammars for one tokenizer on a worker thread; compiled grammars cached by (kind, spec)."""

    def __init__(self, tokenizer, vocab_size: int, stop_token_ids: tuple[int, ...], max_cached: int = 256):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.stop_token_ids = list(stop_token_ids)
        self.max_cached = max_cached
        self._compiler = None
        self._cache: dict[tuple[str, str], Future] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="grammar")

    def state_for(self, kind: str, spec: str) -> GrammarState:
        """A new request's grammar state; starts compiling (kind, spec) unless it is cached or under way."""
        key = (kind, spec)
        with self._lock:
            fut = self._cache.get(key)
            if fut is None or (fut.done() and fut.exception() is not None):
                if len(self._cache) >= self.max_cached:  # drop the oldest entry (dicts keep insertion order)
                    self._cache.pop(next(iter(self._cache)))
                fut = self._pool.submit(self._compile, kind, spec)
                self._cache[key] = fut
        return GrammarState(fut)

    def _compile(self, kind: str, spec: str):
        xgr = _xgr()
        if self._compiler is None:  # the tokenizer's vocabulary is analysed once, on this thread
            info = xgr.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size,
                                                      stop_token_ids=self.stop_token_ids)
            self._compiler = xgr.GrammarCompiler(info, max_threads=1)
        if kind == "json_schema":
            # Whitespace between elements is bounded: unbounded, a weak or undertrained model can spend its whole
            # budget on blanks before the first key (what vLLM's disable-any-whitespace guards against).
            return self._compiler.compile_json_schema(spec, max_whitespace_cnt=MAX_JSON_WHITESPACE)
        if kind == "regex":
            return self._compiler.compile_regex(spec)
        return self._compiler.compile_grammar(spec)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


class GrammarMasks:
    """The token bitmask buffer the runner fills for constrained rows; [max_rows, ceil(V / 32)] int32, bit j of
    word w allowing token 32 * w + j."""

    def __init__(self, max_rows: int, vocab_size: int):
        self.vocab_size = vocab_size
        self.bitmask = _xgr().allocate_token_bitmask(max_rows, vocab_size)
        self._batch = None  # xgrammar.BatchGrammarMatcher, made on the first step with two constrained rows
        # banned[byte] = the 8 tokens a bitmask byte forbids, little-endian like the int32 words: viewed as bytes,
        # byte k holds tokens 8k .. 8k + 7
        self._banned = (((torch.arange(256)[:, None] >> torch.arange(8)) & 1) == 0).to(torch.uint8)  # [256, 8]

    def apply(self, logits: torch.Tensor, rows: list[int], states: list[GrammarState]) -> None:
        """Set to -inf the logits (rows of `logits` [B, V]) each state's grammar forbids next; other rows untouched."""
        xgr = _xgr()
        if self.bitmask.shape[0] < logits.shape[0]:
            self.bitmask = xgr.allocate_token_bitmask(logits.shape[0], self.vocab_size)
        if len(rows) == 1:
            states[0].matcher.fill_next_token_bitmask(self.bitmask, rows[0])
        else:  # xgrammar fills the rows on its own threads, as many as torch computes with
            if self._batch is None:
                self._batch = xgr.BatchGrammarMatcher(max_threads=max(torch.get_num_threads(), 1))
            self._batch.batch_fill_next_token_bitmask([st.matcher for st in states], self.bitmask, rows)
        if logits.device.type == "cpu":
            self.mask_rows(logits, rows)
            return
        bitmask = self.bitmask[: logits.shape[0]].to(logits.device, non_blocking=True)
        xgr.apply_token_bitmask_inplace(logits, bitmask, vocab_size=self.vocab_size, indices=rows)

    def mask_rows(self, logits: torch.Tensor, rows: list[int]) -> None:
        """CPU: logits[r, t] = -inf where bitmask row r forbids t, for r in `rows`. Does what xgrammar's
        apply_token_bitmask_inplace does, in a few tensor ops: its CPU kernel spends ~6 ns a forbidden token
        (18 ms for 64 rows of a 49k vocabulary, nearly all forbidden inside JSON), this ~3x less."""
        v = self.vocab_size
        whole = rows == list(range(logits.shape[0]))
        idx = None if whole else torch.tensor(rows, dtype=torch.int64)
        words = self.bitmask[: logits.shape[0]] if whole else self.bitmask[idx]  # [R, W] int32
        as_bytes = words.contiguous().view(torch.uint8).to(torch.int32)  # [R, 4W]
        banned = torch.nn.functional.embedding(as_bytes, self._banned)  # [R, 4W, 8] uint8
        banned = banned.view(len(rows), -1)[:, :v].bool()  # [R, V]
        if whole:
            logits[:, :v].masked_fill_(banned, float("-inf"))
        else:
            logits[idx, :v] = logits[idx, :v].masked_fill_(banned, float("-inf"))
