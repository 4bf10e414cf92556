"""The log-parsing ICL request: InferLog's instruction and the `icl` dict for one ParseQuery.

The layout itself (four chat messages: system = instruction; user = header + one block per example;
assistant = acknowledgement; user = the query) belongs to the engine, which renders it segment by segment:
see engine/pair/render.py. This module only fills it with log-parsing content.
"""
from __future__ import annotations

from engine.pair.render import ACK, EXAMPLES_HEADER, REFINE_POLICIES, render_messages  # noqa: F401 (re-export)
from engine.pair.render import example_block, query_message
from logparse.selection import ParseQuery

INSTRUCTION = (
    "You are a log parser. Given a log message, find its log template: keep the constant words as they are, "
    "and replace every variable part (numbers, identifiers, addresses, paths, names, values) with `<*>`. "
    "Answer with the log template only, enclosed in backticks."
)
REFINE_MODES = REFINE_POLICIES


def query_text(query: str) -> str:
    return query_message(query)


def render_example_block(ex) -> str:
    """One example's two lines, newline-terminated; `ex` is a {"input", "output"} mapping or has .input/.output."""
    if isinstance(ex, dict):
        return example_block(ex["input"], ex["output"])
    return example_block(ex.input, ex.output)


def to_icl(query: ParseQuery, refine: str = "none") -> dict:
    """The `icl` request body for one ParseQuery (examples in the query's order, most similar last)."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine: must be one of {REFINE_MODES}, got {refine!r}")
    return {
        "instruction": INSTRUCTION,
        "examples": [{"input": log, "output": template} for log, template in query.examples],
        "query": query.query,
        "refine": refine,
    }
