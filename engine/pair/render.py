"""ICL requests → token segments: [head: instruction + header] [example 1] … [example k] [tail: ack + query].

Layout (InferLog's 4 messages, through the model's chat template):
  system    = instruction
  user      = EXAMPLES_HEADER + one block per example ("Log message: `x`\\nLog template: `t`\\n")
  assistant = ACK
  user      = "Log message: `q`"
Each segment is tokenized on its own and the ids concatenated. Boundaries sit right after a newline and
before a special token, where byte-level BPE pre-tokenizers split anyway, so the concatenation equals
tokenizing the whole text (tests check this for the shipped tokenizers). Pure Python: the tokenizer is passed in.
"""
from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

EXAMPLES_HEADER = "Here are example log messages with their templates:\n"
ACK = "Understood. Send the next log message and I will reply with its template in backticks."
REFINE_POLICIES = ("none", "table", "native")
MAX_EXAMPLES = 64


def example_block(inp: str, out: str) -> str:
    return f"Log message: `{inp}`\nLog template: `{out}`\n"


def query_message(query: str) -> str:
    return f"Log message: `{query}`"


def example_id(inp: str, out: str) -> str:
    return hashlib.sha1(f"{inp}\x00{out}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class IclExample:
    id: str
    input: str
    output: str  # the template: PAIR's identity for matching
    ids: tuple[int, ...]


@dataclass(frozen=True)
class IclPrompt:
    head_ids: tuple[int, ...]
    examples: tuple[IclExample, ...]
    tail_ids: tuple[int, ...]
    refine: str | None = None  # None: the engine's pair_policy at admission time

    def assemble(self, examples: Sequence[IclExample]) -> tuple[list[int], tuple[int, ...], tuple[tuple[int, str], ...]]:
        """Token ids, segment boundaries, and (end offset, example id) pairs for the given example order."""
        ids = list(self.head_ids)
        boundaries, seg_ids = [len(ids)], []
        for ex in examples:
            ids.extend(ex.ids)
            boundaries.append(len(ids))
            seg_ids.append((len(ids), ex.id))
        ids.extend(self.tail_ids)
        return ids, tuple(boundaries), tuple(seg_ids)


def validate_icl(icl: Any) -> dict:
    """Check an `icl` dict; ValueError names the bad field (e.g. 'icl.examples[2].output').

    A missing `refine` stays None: the scheduler applies its live `pair_policy` when it refines the request."""
    if not isinstance(icl, dict):
        raise ValueError("icl: must be an object")
    unknown = set(icl) - {"instruction", "examples", "query", "refine"}
    if unknown:
        raise ValueError(f"icl.{sorted(unknown)[0]}: unknown key")
    for key in ("instruction", "query"):
        if key not in icl:
            raise ValueError(f"icl.{key}: missing")
        if not isinstance(icl[key], str):
            raise ValueError(f"icl.{key}: must be a string")
    if not icl["query"]:
        raise ValueError("icl.query: must not be empty")
    exs = icl.get("examples")
    if not isinstance(exs, list) or not exs:
        raise ValueError("icl.examples: must be a non-empty list")
    if len(exs) > MAX_EXAMPLES:
        raise ValueError(f"icl.examples: at most {MAX_EXAMPLES} examples")
    for i, ex in enumerate(exs):
        if not isinstance(ex, dict) or set(ex) - {"input", "output"}:
            raise ValueError(f"icl.examples[{i}]: must be an object with 'input' and 'output'")
        for key in ("input", "output"):
            if not isinstance(ex.get(key), str):
                raise ValueError(f"icl.examples[{i}].{key}: must be a string")
    refine = icl.get("refine")
    if refine is not None and refine not in REFINE_POLICIES:
        raise ValueError(f"icl.refine: must be one of {REFINE_POLICIES}")
    return {**icl, "refine": refine}


def render_messages(icl: dict) -> list[dict]:
    blocks = "".join(example_block(e["input"], e["output"]) for e in icl["examples"])
    return [
        {"role": "system", "content": icl["instruction"]},
        {"role": "user", "content": EXAMPLES_HEADER + blocks},
        {"role": "assistant", "content": ACK},
        {"role": "user", "content": query_message(icl["query"])},
    ]


_BLOCK_PREFIX, _BLOCK_MID = "Log message: `", "`\nLog template: `"


def icl_from_messages(messages: Sequence[dict]) -> dict | None:
    """The icl dict whose `render_messages` are exactly `messages` (InferLog's four-message layout, as a client
    sends it through /v1/chat/completions or a router that forwards only messages), else None.

    Exact: the examples are re-rendered and must reproduce the user message character for character, so a
    recognised chat renders to the same prompt text as the messages would. `refine` is left None (the server's
    --pair-policy decides)."""
    if len(messages) != 4 or [m.get("role") for m in messages] != ["system", "user", "assistant", "user"]:
        return None
    system, examples_msg, ack, query_msg = (m.get("content") for m in messages)
    if not all(isinstance(c, str) for c in (system, examples_msg, ack, query_msg)) or ack != ACK:
        return None
    if not (query_msg.startswith(_BLOCK_PREFIX) and query_msg.endswith("`")) or len(query_msg) <= len(_BLOCK_PREFIX) + 1:
        return None
    if not examples_msg.startswith(EXAMPLES_HEADER):
        return None
    examples, rest = [], examples_msg[len(EXAMPLES_HEADER):]
    while rest:
        # One block: "Log message: `x`\nLog template: `t`\n"; x and t may hold backticks, so split at the
        # separators and let the exact re-rendering below reject an ambiguous split.
        if not rest.startswith(_BLOCK_PREFIX):
            return None
        mid = rest.find(_BLOCK_MID)
        end = rest.find("`\n", mid + len(_BLOCK_MID)) if mid >= 0 else -1
        if end < 0:
            return None
        examples.append({"input": rest[len(_BLOCK_PREFIX):mid], "output": rest[mid + len(_BLOCK_MID):end]})
        rest = rest[end + 2:]
    if not examples or len(examples) > MAX_EXAMPLES:
        return None
    icl = {"instruction": system, "examples": examples, "query": query_msg[len(_BLOCK_PREFIX):-1], "refine": None}
    return icl if render_messages(icl) == [dict(m) for m in messages] else None


class SegmentEncoder:
    """Memoised `tokenizer.encode` for the segments that recur: the head (instruction + header) and example
    blocks, which a log-parsing stream sends again and again (its 200-line candidate pool supplies every
    example). Cuts rendering an ICL request by ~5x; one per tokenizer, made by whoever owns the tokenizer;
    thread-safe (functools.lru_cache)."""

    def __init__(self, tokenizer, capacity: int = 4096):
        self.tokenizer = tokenizer
        self.cached = functools.lru_cache(maxsize=capacity)(self.encode)

    def encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.tokenizer.encode(text, add_special_tokens=False))


def render_icl(tokenizer, icl: dict, encoder: SegmentEncoder | None = None) -> IclPrompt:
    """Render a validated icl dict through the tokenizer's chat template into segments (`encoder`, if given,
    must wrap the same tokenizer; it memoises head and example tokens, not the query's)."""
    text = tokenizer.apply_chat_template(render_messages(icl), tokenize=False, add_generation_prompt=True)
    pos = text.index(EXAMPLES_HEADER) + len(EXAMPLES_HEADER)
    head, cuts = text[:pos], []
    for e in icl["examples"]:
        block = example_block(e["input"], e["output"])
        assert text.startswith(block, pos), "chat template changed the example text"
        cuts.append((e, pos, pos + len(block)))
        pos += len(block)

    encoder = encoder or SegmentEncoder(tokenizer, capacity=0)
    examples = tuple(IclExample(example_id(e["input"], e["output"]), e["input"], e["output"],
                                encoder.cached(text[a:b])) for e, a, b in cuts)
    return IclPrompt(encoder.cached(head), examples, encoder.encode(text[pos:]), icl["refine"])
