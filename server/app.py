"""The FastAPI app: routes, key checks (server/auth.py: tenant, admin and probe routes), body-size limit,
strict JSON bodies (server/body_checks.py), OpenAI-style errors.

Routes: GET /health (503 once a child died or shutdown began), GET /openapi.json, GET /v1/models,
POST /v1/completions, POST /v1/chat/completions, POST /generate (native: {text|input_ids|icl, sampling_params,
stream} → {text, output_ids, meta_info}), GET /metrics, GET /get_server_info (alias /stats: scheduler stats,
KV capacity / free / cache sizes, process ids, current server args), POST /flush_cache (400 unless idle),
POST /update_config (live knobs of engine.knobs, applied between scheduler steps).
Every error is `{"error": {"message", "type", "param", "code"}}`; no request error stops the server; a 500 says
only its request id (the exception goes to the log). Each request's tenant comes from its key, never its body.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import uuid
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.auth import KeyRing, RouteAuth, request_tenant
from server.body_checks import parse_body
from server.errors import APIError, from_value_error
from server.openapi_doc import openapi_document
from server.openai_api import SSE_DONE, OpenAIHandler, sse
from server.request_group import RequestGroup
from server.tokenizer_manager import TokenizerManager

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_DRAIN_BYTES = 64 * 1024 * 1024  # past this an oversized body is not read to the end (the connection drops)

logger = logging.getLogger("pairserve.server")


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> dict[str, Any]:
    """The request body as a JSON object: 413 over `limit` bytes (declared or actual), 400 if not JSON."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_DRAIN_BYTES:
        raise APIError(413, f"request body is larger than {limit} bytes")
    body, size = bytearray(), 0
    # Read to the end even when too large, so the client gets the 413 instead of a reset mid-upload.
    async for chunk in request.stream():
        size += len(chunk)
        if size <= limit:
            body += chunk
        elif size > MAX_DRAIN_BYTES:
            break
    if size > limit:
        raise APIError(413, f"request body is larger than {limit} bytes")
    return parse_body(bytes(body))


def generate_result(r, rid: str) -> dict[str, Any]:
    """The in-process Engine's result shape."""
    meta = {"id": rid, "prompt_tokens": r.prompt_tokens, "completion_tokens": r.completion_tokens,
            "cached_tokens": r.cached_tokens, "finish_reason": r.finish_reason, "e2e_latency": r.e2e_latency}
    meta.update(r.extra or {})
    return {"text": r.text, "output_ids": list(r.output_ids), "meta_info": meta}


async def generate_stream(group: RequestGroup) -> AsyncIterator[str]:
    """Native streaming: each frame has the text so far, its `delta`, output_ids so far and meta_info."""
    text, ids = "", []
    try:
        async for ev in group.events():
            if ev.error is not None:
                yield sse(ev.error.body())
                break
            text += ev.delta
            ids.extend(ev.new_token_ids)
            if ev.delta or ev.finished:
                meta = {"id": group.rids[0], "prompt_tokens": ev.prompt_tokens,
                        "completion_tokens": ev.completion_tokens, "cached_tokens": ev.cached_tokens,
                        "finish_reason": ev.finish_reason if ev.finished else None, **(ev.extra or {})}
                yield sse({"text": text, "delta": ev.delta, "output_ids": list(ids), "meta_info": meta})
        yield SSE_DONE
    finally:
        group.abort()


def build_app(tm: TokenizerManager, args, served_model_name: str, pids: dict[str, int],
              max_body_bytes: int = MAX_BODY_BYTES, keyring: KeyRing | None = None) -> FastAPI:
    """`keyring` (server/auth.py) is built from args at startup; None builds it here (reads --api-key-file)."""
    app = FastAPI(title="pairserve", docs_url=None, redoc_url=None, openapi_url=None)
    openai = OpenAIHandler(tm, served_model_name)
    route_auth = RouteAuth(keyring if keyring is not None else KeyRing.from_args(args))
    auth = [Depends(route_auth.tenant)]  # any tenant key
    admin = [Depends(route_auth.admin)]  # the admin key (server/auth.py)
    probe = [Depends(route_auth.probe)]  # open with --metrics-public

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError):
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException):
        return APIError(exc.status_code, str(exc.detail)).response()

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError):
        return APIError(400, str(exc)).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        request_id = uuid.uuid4().hex
        logger.exception("unhandled error in %s %s (request id %s)", request.method, request.url.path, request_id)
        return APIError(500, f"internal server error (request id {request_id})", code="internal_error").response()

    @app.get("/health", dependencies=probe)
    async def health():
        refusal = tm.unavailable()  # a dead child, or draining for shutdown
        if refusal is not None:
            return refusal.response()
        return {"status": "ok"}

    @app.get("/openapi.json", dependencies=auth)
    async def openapi_json():
        return openapi_document()

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": 0,
                                            "owned_by": "pairserve", "max_model_len": tm.context_len}]}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):
        return await openai.completions(await read_json(request, max_body_bytes), request)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request):
        return await openai.chat(await read_json(request, max_body_bytes), request)

    @app.post("/generate", dependencies=auth)
    async def generate(request: Request):
        body = await read_json(request, max_body_bytes)
        unknown = set(body) - {"text", "input_ids", "icl", "sampling_params", "stream"}
        if unknown:
            key = sorted(unknown)[0]
            raise APIError(400, f"{key}: unknown field", param=key)
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise APIError(400, "stream: must be a boolean", param="stream")
        try:
            inputs, single = await tm.tokenize(prompt=body.get("text"), input_ids=body.get("input_ids"),
                                               sampling_params=body.get("sampling_params"), icl=body.get("icl"))
            if stream and len(inputs) != 1:
                raise ValueError("stream: streaming takes a single prompt")
        except ValueError as e:
            err = from_value_error(e, openai_names=False)
            if err.param == "prompt":
                err.param = "text"
            raise err from None
        group = tm.submit(inputs, tenant=request_tenant(request))
        if stream:
            return StreamingResponse(generate_stream(group), media_type="text/event-stream")
        results = await group.collect(request.is_disconnected)
        out = [generate_result(r, rid) for r, rid in zip(results, group.rids)]
        return out[0] if single else out

    @app.get("/metrics", dependencies=probe)
    async def metrics():
        data, content_type = tm.metrics.render()
        return Response(data, media_type=content_type)

    async def server_info():
        stats = await tm.get_stats()
        public_args = {k: v for k, v in dataclasses.asdict(tm.args).items() if k not in ("api_key", "admin_api_key")}
        return {**stats, "served_model_name": served_model_name, "context_len": tm.context_len,
                "server_args": public_args, "pids": {"server": os.getpid(), **pids}}

    app.get("/get_server_info", dependencies=auth)(server_info)
    app.get("/stats", dependencies=auth)(server_info)

    @app.post("/update_config", dependencies=admin)
    async def update_config(request: Request):
        """Live knobs (engine.knobs.LIVE_KNOBS) as a JSON object → every live knob's value afterwards."""
        body = await read_json(request, max_body_bytes)
        try:
            return await tm.update_config(body)
        except ValueError as e:
            raise from_value_error(e, openai_names=False) from None

    @app.post("/flush_cache", dependencies=admin)
    async def flush_cache():
        res = await tm.flush_cache()
        if not res.success:
            raise APIError(400, f"flush_cache: {res.message}")
        return {"success": True}

    return app
