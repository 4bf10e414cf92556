"""InferLog's ICL request layout: an `icl` dict and the four chat messages it renders to.

    system    : INSTRUCTION
    user      : EXAMPLES_HEADER + render_example_block(ex_1) + ... + render_example_block(ex_k)
    assistant : ACK
    user      : query_text(query)

The pieces are public so the engine can tokenize the same text segment by segment (instruction, one block
per example, query) and reorder example blocks without changing what any block says.
"""
from __future__ import annotations

from typing import Any, Mapping

from logparse.selection import ParseQuery

INSTRUCTION = (
    "You are a log parser. Given a log message, find its log template: keep the constant words as they are, "
    "and replace every variable part (numbers, identifiers, addresses, paths, names, values) with `<*>`. "
    "Answer with the log template only, enclosed in backticks."
)
EXAMPLES_HEADER = "Here are example log messages with their templates:\n"
ACK = "Understood. Send the next log message and I will reply with its template in backticks."
# Refinement modes a request may ask for: none, InferLog's table policy, or the engine's live-tree search.
REFINE_MODES: tuple[str, ...] = ("none", "table", "native")


def query_text(query: str) -> str:
    return f"Log message: `{query}`"


def _input_output(ex: Any) -> tuple[str, str]:
    if isinstance(ex, Mapping):
        if "input" not in ex or "output" not in ex:
            raise ValueError(f"example needs 'input' and 'output' keys, got {sorted(ex)}")
        return ex["input"], ex["output"]
    if hasattr(ex, "input") and hasattr(ex, "output"):
        return ex.input, ex.output
    raise ValueError(f"example must be a mapping or have .input/.output, got {type(ex).__name__}")


def render_example_block(ex: Any) -> str:
    """One example's two lines, newline-terminated. `ex`: a {"input", "output"} mapping or an object
    with `.input` / `.output` attributes."""
    log, template = _input_output(ex)
    return f"Log message: `{log}`\nLog template: `{template}`\n"


def to_icl(query: ParseQuery, refine: str = "none") -> dict:
    """The `icl` request body for one ParseQuery (examples in the query's order, most similar last)."""
    if refine not in REFINE_MODES:
        raise ValueError(f"refine must be one of {REFINE_MODES}, got {refine!r}")
    return {
        "instruction": INSTRUCTION,
        "examples": [{"input": log, "output": template} for log, template in query.examples],
        "query": query.query,
        "refine": refine,
    }


def render_messages(icl: Mapping[str, Any]) -> list[dict]:
    """The four chat messages for an `icl` dict (keys: instruction, examples, query; refine is ignored)."""
    for field in ("instruction", "examples", "query"):
        if field not in icl:
            raise ValueError(f"icl lacks field {field!r}")
    if not isinstance(icl["instruction"], str) or not isinstance(icl["query"], str):
        raise ValueError("icl fields 'instruction' and 'query' must be strings")
    examples_text = EXAMPLES_HEADER + "".join(render_example_block(ex) for ex in icl["examples"])
    return [
        {"role": "system", "content": icl["instruction"]},
        {"role": "user", "content": examples_text},
        {"role": "assistant", "content": ACK},
        {"role": "user", "content": query_text(icl["query"])},
    ]
