"""OpenAI tool calling in the Hermes / Qwen2.5 style: tools rendered by the model's chat template, calls parsed
from `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks in the output.

- `ToolRequest.parse(body)` validates `tools` and `tool_choice` (none / auto / required / {"type": "function",
  "function": {"name"}}); with "none" (or no tools) nothing is rendered or parsed, as vLLM and SGLang do.
- `required` and a named function are enforced with a JSON-schema constraint on the whole output (one call
  object, `call_schema`), which needs the engine's `json_schema` sampling parameter: until the engine has it they
  are refused with 400 rather than left unenforced.
- `split_tool_calls(text)` → (content, calls) for a finished output; `ToolStreamParser` does the same on a
  stream: content deltas pass through except text that may start a `<tool_call>` block, which is held back until
  the block completes (one call: a delta with id, type, name and empty arguments, then one with the arguments, as
  OpenAI streams them) or proves not to be one (then it is content).
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from server.errors import APIError

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"


@dataclass(frozen=True)
class ToolRequest:
    tools: tuple[dict, ...]  # OpenAI tool objects, as sent
    choice: str  # "auto" | "required" | a function name
    parallel: bool = True  # parallel_tool_calls: False keeps only the first call

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(t["function"]["name"] for t in self.tools)

    @classmethod
    def parse(cls, body: dict) -> "ToolRequest | None":
        """None when no tool may be called (no tools, or tool_choice "none"); 400 naming a malformed field."""
        tools, choice = body.get("tools"), body.get("tool_choice")
        if tools is None or tools == []:
            if choice not in (None, "none", "auto"):
                raise APIError(400, "tool_choice: needs tools", param="tool_choice")
            return None
        if not isinstance(tools, list):
            raise APIError(400, "tools: must be a list of tool objects", param="tools")
        seen = set()
        for i, t in enumerate(tools):
            fn = t.get("function") if isinstance(t, dict) else None
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(fn, dict):
                raise APIError(400, f"tools[{i}]: must be {{'type': 'function', 'function': {{...}}}}", param="tools")
            if not isinstance(fn.get("name"), str) or not fn["name"] or fn["name"] in seen:
                raise APIError(400, f"tools[{i}].function.name: must be a distinct non-empty string", param="tools")
            if fn.get("parameters") is not None and not isinstance(fn["parameters"], dict):
                raise APIError(400, f"tools[{i}].function.parameters: must be a JSON schema object", param="tools")
            seen.add(fn["name"])
        if choice is None or choice == "auto":
            name = "auto"
        elif choice == "none":
            return None
        elif choice == "required":
            name = "required"
        elif isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"),
                                                                                          dict):
            name = choice["function"].get("name")
            if name not in seen:
                raise APIError(400, f"tool_choice: no tool named {name!r} in tools", param="tool_choice")
        else:
            raise APIError(400, "tool_choice: must be 'none', 'auto', 'required' or "
                                "{'type': 'function', 'function': {'name': ...}}", param="tool_choice")
        parallel = body.get("parallel_tool_calls")
        if parallel is not None and not isinstance(parallel, bool):
            raise APIError(400, "parallel_tool_calls: must be a boolean", param="parallel_tool_calls")
        return cls(tuple(tools), name, parallel is not False)

    @property
    def forced(self) -> bool:
        return self.choice != "auto"

    def call_schema(self) -> dict:
        """The JSON schema the whole output must match when a call is forced: one {name, arguments} object."""
        options = [t["function"] for t in self.tools
                   if self.choice == "required" or t["function"]["name"] == self.choice]
        variants = [{"type": "object", "properties": {"name": {"const": fn["name"]},
                                                      "arguments": fn.get("parameters") or {"type": "object"}},
                     "required": ["name", "arguments"]} for fn in options]
        return variants[0] if len(variants) == 1 else {"anyOf": variants}


def make_call(name: str, arguments: Any) -> dict:
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function",
            "function": {"name": name, "arguments": json.dumps(arguments, ensure_ascii=False)}}


def _call_from_json(text: str, names: tuple[str, ...]) -> dict | None:
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models emit the arguments already encoded
        try:
            args = json.loads(args)
        except ValueError:
            return None
    return make_call(obj["name"], args) if isinstance(args, dict) else None


def split_tool_calls(text: str, names: tuple[str, ...], forced: bool = False) -> tuple[str | None, list[dict]]:
    """(content, tool calls) of a finished output. A block that does not parse (bad JSON, unknown tool) stays in
    the content. `forced`: the whole output is one call object (the JSON-schema constrained case)."""
    if forced:
        call = _call_from_json(text.strip(), names)
        return (None, [call]) if call is not None else (text, [])
    content, calls, pos = [], [], 0
    while True:
        start = text.find(CALL_OPEN, pos)
        end = text.find(CALL_CLOSE, start + len(CALL_OPEN)) if start >= 0 else -1
        if end < 0:
            content.append(text[pos:])
            break
        call = _call_from_json(text[start + len(CALL_OPEN):end].strip(), names)
        if call is None:
            content.append(text[pos:end + len(CALL_CLOSE)])
        else:
            content.append(text[pos:start])
            calls.append(call)
        pos = end + len(CALL_CLOSE)
    joined = "".join(content)
    if calls:
        joined = joined.strip()
    return (joined or None) if calls else joined, calls


class ToolStreamParser:
    """Incremental `split_tool_calls` for one choice of a stream."""

    def __init__(self, names: tuple[str, ...], forced: bool = False, max_calls: int | None = None):
        self.names = names
        self.forced = forced
        self.max_calls = max_calls  # calls past it are dropped (parallel_tool_calls false: 1)
        self.buf = ""
        self.num_calls = 0

    def feed(self, delta: str) -> list[dict]:
        """Chat-completion `delta` objects ({"content"} or {"tool_calls"}) ready to send after `delta`."""
        self.buf += delta
        if self.forced:
            return []  # one JSON object: parsed whole at the end
        out: list[dict] = []
        while True:
            start = self.buf.find(CALL_OPEN)
            if start < 0:
                # keep back a tail that could be the start of "<tool_call>"
                keep = next((k for k in range(min(len(CALL_OPEN) - 1, len(self.buf)), 0, -1)
                             if CALL_OPEN.startswith(self.buf[-k:])), 0)
                emit, self.buf = self.buf[:len(self.buf) - keep], self.buf[len(self.buf) - keep:]
                if emit:
                    out.append({"content": emit})
                return out
            if start > 0:
                out.append({"content": self.buf[:start]})
                self.buf = self.buf[start:]
            end = self.buf.find(CALL_CLOSE)
            if end < 0:
                return out  # inside a block: wait for its end
            block, self.buf = self.buf[:end + len(CALL_CLOSE)], self.buf[end + len(CALL_CLOSE):]
            call = _call_from_json(block[len(CALL_OPEN):-len(CALL_CLOSE)].strip(), self.names)
            out.extend(self._call_deltas(call) if call is not None else [{"content": block}])

    def finish(self) -> list[dict]:
        """Deltas for what is left when the choice ends (an unfinished block is content)."""
        rest, self.buf = self.buf, ""
        if self.forced:
            _, calls = split_tool_calls(rest, self.names, forced=True)
            return self._call_deltas(calls[0]) if calls else ([{"content": rest}] if rest else [])
        return [{"content": rest}] if rest else []

    def _call_deltas(self, call: dict) -> list[dict]:
        if self.max_calls is not None and self.num_calls >= self.max_calls:
            return []
        index, self.num_calls = self.num_calls, self.num_calls + 1
        head = {"index": index, "id": call["id"], "type": "function",
                "function": {"name": call["function"]["name"], "arguments": ""}}
        return [{"tool_calls": [head]},
                {"tool_calls": [{"index": index, "function": {"arguments": call["function"]["arguments"]}}]}]


def assistant_message(text: str, reason: str | None, tools: ToolRequest | None) -> tuple[dict, str | None]:
    """A finished choice's (message, finish_reason): with tools, calls parsed out of the text (finish_reason
    "tool_calls" when there are any; parallel_tool_calls false keeps the first)."""
    if tools is None:
        return {"role": "assistant", "content": text}, reason
    content, calls = split_tool_calls(text, tools.names, tools.forced)
    if not calls:
        return {"role": "assistant", "content": text}, reason
    return {"role": "assistant", "content": content, "tool_calls": calls if tools.parallel else calls[:1]}, \
        "tool_calls"
