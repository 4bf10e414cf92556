"""Request bodies as the server accepts them: strict JSON (no NaN / Infinity), every string valid Unicode.

Python's json module accepts the non-standard constants NaN, Infinity and -Infinity, and decodes a `\\ud800`
escape into a lone surrogate that no tokenizer can encode (it surfaced as a 500 with the tokenizer's TypeError).
Both are the client's mistake: a 400 naming where in the body it is.
"""
from __future__ import annotations

import json
from typing import Any

from server.errors import APIError


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON (send a number)")


def _where(path: list) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "body"


def find_bad_text(obj: Any) -> str | None:
    """The path (e.g. 'messages[0].content') of the first string, or object key, that is not valid Unicode
    (a lone surrogate), or None. Iterative, so deeply nested bodies cannot exhaust the stack."""
    stack: list[tuple[Any, list]] = [(obj, [])]
    while stack:
        value, path = stack.pop()
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return _where(path)
        elif isinstance(value, dict):
            for k, v in value.items():
                stack.append((k, path))
                stack.append((v, path + [k]))
        elif isinstance(value, list):
            stack.extend((v, path + [i]) for i, v in enumerate(value))
    return None


def parse_body(body: bytes) -> dict[str, Any]:
    """A request body as a JSON object; APIError 400 for anything else (invalid UTF-8 or JSON, NaN, lone
    surrogates, a non-object)."""
    try:
        obj = json.loads(body, parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
        raise APIError(400, f"body: invalid JSON ({e})", code="invalid_json") from None
    except RecursionError:
        raise APIError(400, "body: invalid JSON (nested too deeply)", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "body: must be a JSON object")
    bad = find_bad_text(obj)
    if bad is not None:
        raise APIError(400, f"{bad}: not valid Unicode (a lone UTF-16 surrogate)", param=bad.split(".")[0].split("[")[0],
                       code="invalid_unicode")
    return obj
