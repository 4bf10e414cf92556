"""The server's OpenAPI 3.1 document (GET /openapi.json, behind a key like the other routes).

Written out rather than derived from the route functions, which read raw bodies: it describes the request bodies
the handlers accept, so schema-driven fuzzers (schemathesis in bench.reliability) can exercise them. Lengths are
kept small (max_tokens, n, prompt sizes) so that a positive-mode fuzzing run generates cheap requests; the server
itself accepts more (its limits are the context length and the checks in openai_api.py / request_input.py).
"""
from __future__ import annotations

from typing import Any

_SMALL_TEXT = {"type": "string", "minLength": 1, "maxLength": 200}
_STOP = {"anyOf": [_SMALL_TEXT, {"type": "array", "items": _SMALL_TEXT, "maxItems": 4}]}
_SAMPLING_COMMON = {
    "temperature": {"type": "number", "minimum": 0, "maximum": 2},
    "top_p": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
    "top_k": {"type": "integer", "minimum": -1, "maximum": 100},
    "min_p": {"type": "number", "minimum": 0, "maximum": 1},
    "seed": {"type": "integer", "minimum": 0, "maximum": 2 ** 31},
    "stop": _STOP,
    "ignore_eos": {"type": "boolean"},
}
_OPENAI_COMMON = {
    "model": {"type": "string"},
    "max_tokens": {"type": "integer", "minimum": 1, "maximum": 8},
    "n": {"type": "integer", "minimum": 1, "maximum": 2},
    "stream": {"type": "boolean"},
    **_SAMPLING_COMMON,
}
_EXAMPLE = {"type": "object", "required": ["input", "output"], "additionalProperties": False,
            "properties": {"input": _SMALL_TEXT, "output": _SMALL_TEXT}}
ICL = {"type": "object", "required": ["instruction", "examples", "query"], "additionalProperties": False,
       "properties": {"instruction": {"type": "string", "maxLength": 200}, "query": _SMALL_TEXT,
                      "examples": {"type": "array", "items": _EXAMPLE, "minItems": 1, "maxItems": 4},
                      "refine": {"enum": ["none", "table", "native"]}}}
_MESSAGE = {"type": "object", "required": ["role", "content"],
            "properties": {"role": {"enum": ["system", "user", "assistant", "developer"]},
                           "content": {"type": "string", "maxLength": 200}}}

BODIES: dict[str, dict[str, Any]] = {
    "/v1/completions": {"type": "object", "required": ["prompt", "max_tokens"],
                        "properties": {"prompt": _SMALL_TEXT, **_OPENAI_COMMON}},
    "/v1/chat/completions": {"type": "object", "required": ["messages", "max_tokens"],
                             "properties": {"messages": {"type": "array", "items": _MESSAGE, "minItems": 1,
                                                         "maxItems": 4}, **_OPENAI_COMMON}},
    "/generate": {"type": "object", "required": ["text", "sampling_params"], "additionalProperties": False,
                  "properties": {"text": _SMALL_TEXT, "stream": {"type": "boolean"},
                                 "sampling_params": {"type": "object", "required": ["max_new_tokens"],
                                                     "additionalProperties": False, "properties": {
                                                         "max_new_tokens": {"type": "integer", "minimum": 1,
                                                                            "maximum": 8},
                                                         **_SAMPLING_COMMON}}}},
    "/update_config": {"type": "object", "additionalProperties": False,
                       "properties": {"schedule_policy": {"enum": ["fcfs", "lpm", "dfs-weight"]},
                                      "lpm_aging_seconds": {"type": "number", "minimum": 0, "maximum": 10}}},
}
GET_ROUTES = ("/health", "/metrics", "/v1/models", "/get_server_info", "/stats")
POST_ROUTES_WITHOUT_BODY = ("/flush_cache",)
_ERROR = {"type": "object", "required": ["error"], "properties": {"error": {
    "type": "object", "required": ["message", "type", "param", "code"]}}}


def _responses() -> dict[str, Any]:
    err = {"content": {"application/json": {"schema": _ERROR}}}
    return {"200": {"description": "OK"}, "400": {"description": "bad request", **err},
            "401": {"description": "no or wrong key", **err}, "403": {"description": "admin only", **err},
            "404": {"description": "unknown model", **err}, "503": {"description": "unavailable", **err}}


def openapi_document(title: str = "pairserve") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for path in GET_ROUTES:
        paths[path] = {"get": {"operationId": "get" + path.replace("/", "_"), "responses": _responses()}}
    for path in POST_ROUTES_WITHOUT_BODY:
        paths[path] = {"post": {"operationId": "post" + path.replace("/", "_"), "responses": _responses()}}
    for path, schema in BODIES.items():
        paths[path] = {"post": {"operationId": "post" + path.replace("/", "_").replace(".", "_"),
                                "requestBody": {"required": True, "content": {"application/json": {"schema": schema}}},
                                "responses": _responses()}}
    return {"openapi": "3.1.0", "info": {"title": title, "version": "1"},
            "components": {"securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
            "security": [{"bearer": []}], "paths": paths}
