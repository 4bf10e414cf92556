"""OpenAI request fields for sampling, penalties, logprobs, structured output and priority → the engine's
(SGLang-named) sampling params and request fields. Bad values raise APIError 400 naming the OpenAI field.

| OpenAI / extension field                          | engine                                              |
|---------------------------------------------------|-----------------------------------------------------|
| frequency_penalty, presence_penalty, logit_bias   | same-named sampling params                          |
| repetition_penalty, min_tokens (vLLM / SGLang)    | repetition_penalty, min_new_tokens                  |
| regex, ebnf, json_schema (SGLang extras)          | same-named sampling params                          |
| response_format {"type": "json_object"}           | json_schema '{"type": "object"}' (SGLang's mapping) |
| response_format {"type": "json_schema", ...}      | json_schema = json.dumps(json_schema.schema)        |
| chat: logprobs (bool), top_logprobs (0..20)       | return_logprob, top_logprobs_num                    |
| completions: logprobs (int 0..20)                 | return_logprob, top_logprobs_num                    |
| priority (SGLang extra)                           | priority                                            |
"""
from __future__ import annotations

import json
from typing import Any

from engine.logprob_options import MAX_TOP_LOGPROBS
from server.errors import APIError

PASSTHROUGH = ("frequency_penalty", "presence_penalty", "logit_bias", "repetition_penalty", "regex", "ebnf",
               "json_schema")
RENAMED = {"min_tokens": "min_new_tokens"}


def sampling_fields(body: dict) -> dict[str, Any]:
    """Sampling params for the fields of the table above that the body sets (None = unset)."""
    sp: dict[str, Any] = {k: body[k] for k in PASSTHROUGH if body.get(k) is not None}
    sp.update({ours: body[theirs] for theirs, ours in RENAMED.items() if body.get(theirs) is not None})
    schema = response_format_schema(body.get("response_format"))
    if schema is not None:
        if any(sp.get(k) is not None for k in ("regex", "ebnf", "json_schema")):
            raise APIError(400, "response_format: cannot be combined with regex, ebnf or json_schema",
                           param="response_format")
        sp["json_schema"] = schema
    return sp


def response_format_schema(fmt: Any) -> str | None:
    """The JSON schema (as a string) a response_format asks for; None for none or {"type": "text"}."""
    if fmt is None:
        return None
    if not isinstance(fmt, dict) or not isinstance(fmt.get("type"), str):
        raise APIError(400, "response_format: must be an object with a string 'type'", param="response_format")
    kind = fmt["type"]
    if kind == "text":
        return None
    if kind == "json_object":
        return json.dumps({"type": "object"})
    if kind == "json_schema":
        spec = fmt.get("json_schema")
        schema = spec.get("schema") if isinstance(spec, dict) else None
        if not isinstance(schema, dict):
            raise APIError(400, "response_format.json_schema.schema: must be a JSON schema object",
                           param="response_format")
        return json.dumps(schema)
    raise APIError(400, f"response_format.type: must be text, json_object or json_schema (got {kind!r})",
                   param="response_format")


def logprob_fields(body: dict, chat: bool) -> dict[str, Any]:
    """Request fields (engine.request_input.REQUEST_FIELDS) for the body's logprob and priority fields."""
    out: dict[str, Any] = {}
    if body.get("priority") is not None:
        out["priority"] = body["priority"]
    logprobs = body.get("logprobs")
    if chat:
        top = body.get("top_logprobs")
        if logprobs is not None and not isinstance(logprobs, bool):
            raise APIError(400, f"logprobs: must be a boolean (got {logprobs!r})", param="logprobs")
        if top is not None and (isinstance(top, bool) or not isinstance(top, int)
                                or not 0 <= top <= MAX_TOP_LOGPROBS):
            raise APIError(400, f"top_logprobs: must be an integer in [0, {MAX_TOP_LOGPROBS}] (got {top!r})",
                           param="top_logprobs")
        if top and not logprobs:
            raise APIError(400, "top_logprobs: needs logprobs set to true", param="top_logprobs")
        if logprobs:
            out.update(return_logprob=True, top_logprobs_num=top or 0)
        return out
    if logprobs is None or logprobs is False:
        return out
    if isinstance(logprobs, bool) or not isinstance(logprobs, int) or not 0 <= logprobs <= MAX_TOP_LOGPROBS:
        raise APIError(400, f"logprobs: must be an integer in [0, {MAX_TOP_LOGPROBS}] (got {logprobs!r})",
                       param="logprobs")
    out.update(return_logprob=True, top_logprobs_num=logprobs)
    return out
