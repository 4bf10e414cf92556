"""Who answers the parser's LLM calls, always as `icl` requests (so PAIR applies): in process, over HTTP, or an oracle.

- model (`--model demo|DIR`, or `--url URL`): greedy, up to `max_new_tokens`, stop at EOS; the answer's template is
  `extract_template(text, fallback=query)`.
- oracle (`--model oracle:CSV`): the answer is the ground-truth template of the call's query line. With no engine
  (`--oracle-engine` not given) nothing runs: call counts, cache hits and accuracy are exact, token counts and
  token_hit_rate are null. With `--oracle-engine MODEL` every call still goes through that engine's icl path with
  `max_new_tokens` = the tokens of the answer as a perfect model writes it (the template in backticks) and
  `ignore_eos`: the engine prefills the same prompt and decodes as many tokens as the right answer has, so
  token_hit_rate, PAIR and wall time are those of a model that is always right (bench.logparse's
  `--output-len oracle` does the same); the decoded text is discarded.

`Caller.run(calls, concurrency)` yields (call, answer) as calls finish, `concurrency` in flight, started in the
given order; closing the generator (Ctrl-C) stops starting new ones.
"""
from __future__ import annotations

import json
import queue
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

from logparse.postprocess import extract_template
from logparse.prompt import INSTRUCTION


@dataclass(frozen=True)
class LlmCall:
    line_id: int
    content: str
    examples: tuple[tuple[str, str], ...]
    truth: str | None = None  # the oracle's answer


@dataclass(frozen=True)
class LlmAnswer:
    template: str
    prompt_tokens: int | None = None
    cached_tokens: int | None = None
    completion_tokens: int | None = None


def icl_body(call: LlmCall, refine: str) -> dict:
    return {"instruction": INSTRUCTION, "query": call.content, "refine": refine,
            "examples": [{"input": i, "output": o} for i, o in call.examples]}


class EngineTransport:
    """In-process: `Engine.generate(icl=...)` (thread-safe; concurrent callers batch together)."""

    def __init__(self, engine):
        self.engine = engine
        self.tokenizer = engine.tokenizer

    def __call__(self, icl: dict, sampling_params: dict) -> tuple[str, dict]:
        out = self.engine.generate(icl=icl, sampling_params=sampling_params)
        return out["text"], out["meta_info"]


class HttpTransport:
    """A running `python -m server`: POST {url}/generate with {"icl", "sampling_params"} (Bearer `api_key`)."""

    tokenizer = None

    def __init__(self, url: str, api_key: str | None = None, timeout_s: float = 600.0):
        self.url = url.rstrip("/") + "/generate"
        self.headers = {"Content-Type": "application/json"}
        if api_key:
            self.headers["Authorization"] = f"Bearer {api_key}"
        self.timeout_s = timeout_s

    def __call__(self, icl: dict, sampling_params: dict) -> tuple[str, dict]:
        body = json.dumps({"icl": icl, "sampling_params": sampling_params}).encode()
        req = urllib.request.Request(self.url, data=body, headers=self.headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                out = json.loads(resp.read())
        except urllib.error.HTTPError as e:
            detail = e.read().decode(errors="replace")
            try:
                detail = json.loads(detail)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                pass
            raise RuntimeError(f"server {self.url} answered {e.code}: {detail}") from None
        except (urllib.error.URLError, OSError) as e:
            raise RuntimeError(f"cannot reach server {self.url}: {getattr(e, 'reason', e)}") from None
        return out["text"], out["meta_info"]


class Caller:
    """Answers LlmCalls with a transport (None: pure oracle) and an answer rule (model or oracle)."""

    def __init__(self, transport: Callable[[dict, dict], tuple[str, dict]] | None, oracle: bool,
                 refine: str = "native", max_new_tokens: int = 96):
        if transport is None and not oracle:
            raise ValueError("a model answer needs a transport (an engine or --url)")
        if oracle and transport is not None and getattr(transport, "tokenizer", None) is None:
            raise ValueError("--oracle-engine runs in process; it cannot go through --url")
        self.transport = transport
        self.oracle = oracle
        self.refine = refine
        self.max_new_tokens = max_new_tokens

    def answer(self, call: LlmCall) -> LlmAnswer:
        if self.oracle and call.truth is None:
            raise ValueError(f"oracle: no ground-truth template for line {call.line_id}: {call.content[:80]!r}")
        if self.transport is None:
            return LlmAnswer(call.truth)
        if self.oracle:
            n = len(self.transport.tokenizer.encode(f"`{call.truth}`", add_special_tokens=False))
            sp = {"max_new_tokens": max(n, 1), "ignore_eos": True, "temperature": 0}
        else:
            sp = {"max_new_tokens": self.max_new_tokens, "temperature": 0}
        text, meta = self.transport(icl_body(call, self.refine), sp)
        template = call.truth if self.oracle else extract_template(text, fallback=call.content)
        return LlmAnswer(template, meta["prompt_tokens"], meta["cached_tokens"], meta["completion_tokens"])

    def run(self, calls: Sequence[LlmCall], concurrency: int) -> Iterator[tuple[LlmCall, LlmAnswer]]:
        if self.transport is None or concurrency <= 1 or len(calls) <= 1:
            for call in calls:
                yield call, self.answer(call)
            return
        yield from self._run_threads(calls, concurrency)

    def _run_threads(self, calls: Sequence[LlmCall], concurrency: int) -> Iterator[tuple[LlmCall, LlmAnswer]]:
        lock = threading.Lock()
        pending = iter(calls)
        stop = threading.Event()
        done: "queue.Queue[tuple[LlmCall, LlmAnswer | BaseException]]" = queue.Queue()

        def worker() -> None:
            while not stop.is_set():
                with lock:
                    call = next(pending, None)
                if call is None:
                    return
                try:
                    done.put((call, self.answer(call)))
                except BaseException as e:  # handed to the consumer, which raises it
                    done.put((call, e))
                    return

        threads = [threading.Thread(target=worker, daemon=True) for _ in range(min(concurrency, len(calls)))]
        for t in threads:
            t.start()
        try:
            for _ in range(len(calls)):
                call, result = done.get()
                if isinstance(result, BaseException):
                    raise result
                yield call, result
        finally:
            stop.set()  # no new calls start; those in flight finish on their daemon threads
