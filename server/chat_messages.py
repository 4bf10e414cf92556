"""Validation of chat `messages` into what chat templates take.

Text content, or a list of text parts (joined); an assistant message may carry `tool_calls` instead of content
(their `function.arguments` JSON strings are decoded into objects, the form HF chat templates render), and a
`tool` message answers one with `tool_call_id`. Other part types (images, audio) are refused: text-only models.
"""
from __future__ import annotations

import json
from types import MappingProxyType
from typing import Any

from server.errors import APIError

# OpenAI's roles → what chat templates know: "developer" is OpenAI's newer name for the system role.
CHAT_ROLES = MappingProxyType({"system": "system", "user": "user", "assistant": "assistant", "tool": "tool",
                               "developer": "system"})


def _text(content: Any, i: int) -> str:
    if isinstance(content, list):
        if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                   for p in content):
            raise APIError(400, f"messages[{i}].content: only text parts are supported", param="messages")
        content = "".join(p["text"] for p in content)
    if not isinstance(content, str):
        raise APIError(400, f"messages[{i}].content: must be a string or a list of text parts", param="messages")
    return content


def _tool_calls(calls: Any, i: int) -> list[dict]:
    if not isinstance(calls, list):
        raise APIError(400, f"messages[{i}].tool_calls: must be a list", param="messages")
    out = []
    for j, call in enumerate(calls):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise APIError(400, f"messages[{i}].tool_calls[{j}]: must have function.name", param="messages")
        args = fn.get("arguments", {})
        if isinstance(args, str):
            try:
                args = json.loads(args) if args.strip() else {}
            except ValueError:
                raise APIError(400, f"messages[{i}].tool_calls[{j}].function.arguments: not JSON",
                               param="messages") from None
        out.append({"id": call.get("id"), "type": "function", "function": {"name": fn["name"], "arguments": args}})
    return out


def chat_messages(body: dict) -> list[dict[str, Any]]:
    """Validated messages as {"role", "content": str} (+ "tool_calls" / "tool_call_id" / "name" where given)."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "messages: must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}]: must be an object with a string 'role'", param="messages")
        if m["role"] not in CHAT_ROLES:
            raise APIError(400, f"messages[{i}].role: must be one of {sorted(CHAT_ROLES)} (got {m['role']!r})",
                           param="messages")
        msg: dict[str, Any] = {"role": CHAT_ROLES[m["role"]]}
        if m["role"] == "assistant" and m.get("tool_calls"):
            msg["content"] = "" if m.get("content") is None else _text(m["content"], i)
            msg["tool_calls"] = _tool_calls(m["tool_calls"], i)
        else:
            msg["content"] = _text(m.get("content"), i)
        if m["role"] == "tool" and m.get("tool_call_id") is not None:
            msg["tool_call_id"] = m["tool_call_id"]
        if isinstance(m.get("name"), str) and m["role"] == "tool":
            msg["name"] = m["name"]
        out.append(msg)
    return out
