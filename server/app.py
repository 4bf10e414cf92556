"""The FastAPI app: routes, API-key check, body-size limit, OpenAI-style errors.

Routes: GET /health (no key needed; 503 once a child died or shutdown began), GET /v1/models (every served name,
with max_model_len), POST /v1/completions, POST /v1/chat/completions, POST /generate (SGLang's native route:
{text|input_ids|icl, sampling_params, stream, rid, ...} → {text, output_ids, meta_info}; every SGLang key is
classified in server.api_fields), GET /metrics (unless --no-enable-metrics), POST /flush_cache (400 unless
idle), POST /update_config (live knobs of engine.knobs, applied between scheduler steps), and SGLang's other
native routes (server.sglang_routes: /get_server_info, /get_model_info, /get_load, /health_generate, /tokenize,
/detokenize, /abort_request, /version).
Every error is `{"error": {"message", "type", "param", "code"}}`; no request error stops the server.
"""
from __future__ import annotations

import json
import logging
import secrets
from typing import Any, AsyncIterator

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from server.api_fields import GENERATE_FIELDS, sampling_from_sglang, screen
from server.errors import APIError, from_value_error
from server.openai_api import SSE_DONE, OpenAIHandler, sse
from server.request_group import RequestGroup
from server.sglang_routes import add_sglang_routes
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
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise APIError(400, f"body: invalid JSON ({e})", code="invalid_json") from None
    if not isinstance(obj, dict):
        raise APIError(400, "body: must be a JSON object")
    return obj


def generate_public_ids(body: dict) -> list[str] | None:
    """/generate's `rid`: one id (a single prompt) or one per prompt; 400 if malformed. None: none sent."""
    rid = body.get("rid")
    if rid is None:
        return None
    rids = [rid] if isinstance(rid, str) else rid
    if not isinstance(rids, list) or not rids or not all(isinstance(r, str) and r for r in rids):
        raise APIError(400, "rid: must be a non-empty string or a list of them", param="rid")
    return rids


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
                meta = {"id": group.public_ids[0], "prompt_tokens": ev.prompt_tokens,
                        "completion_tokens": ev.completion_tokens, "cached_tokens": ev.cached_tokens,
                        "finish_reason": ev.finish_reason if ev.finished else None, **(ev.extra or {})}
                yield sse({"text": text, "delta": ev.delta, "output_ids": list(ids), "meta_info": meta})
        yield SSE_DONE
    finally:
        group.abort()


def build_app(tm: TokenizerManager, args, served_model_names: tuple[str, ...], pids: dict[str, int],
              model_path: str = "", max_body_bytes: int = MAX_BODY_BYTES) -> FastAPI:
    app = FastAPI(title="pairserve", docs_url=None, redoc_url=None, openapi_url=None)
    openai = OpenAIHandler(tm, served_model_names)

    def require_key(request: Request) -> None:
        if args.api_key is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), args.api_key.encode()):
            raise APIError(401, "invalid or missing API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    auth = [Depends(require_key)]

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
        logger.exception("unhandled error in %s %s", request.method, request.url.path)
        return APIError(500, f"internal error: {type(exc).__name__}: {exc}").response()

    @app.get("/health")
    async def health():
        if tm.dead_reason is not None:
            return APIError(tm.dead_status, tm.dead_reason).response()
        return {"status": "ok"}

    @app.get("/v1/models", dependencies=auth)
    async def models():
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "pairserve",
                                            "root": model_path or name, "max_model_len": tm.context_len}
                                           for name in served_model_names]}

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request):
        return await openai.completions(await read_json(request, max_body_bytes), request)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request):
        return await openai.chat(await read_json(request, max_body_bytes), request)

    @app.post("/generate", dependencies=auth)
    async def generate(request: Request):
        body = await read_json(request, max_body_bytes)
        public_ids = generate_public_ids(body)
        screen(body, GENERATE_FIELDS, public_ids[0] if public_ids else "(no rid)")
        model = body.get("model")
        if model is not None and model not in served_model_names:
            raise APIError(404, f"model: {model!r} does not exist; this server serves {list(served_model_names)}",
                           param="model", code="model_not_found")
        stream = body.get("stream") or False
        if not isinstance(stream, bool):
            raise APIError(400, "stream: must be a boolean", param="stream")
        sampling = body.get("sampling_params")
        sampling = [sampling_from_sglang(sp) for sp in sampling] if isinstance(sampling, list) else (
            sampling_from_sglang(sampling))
        try:
            inputs, single = await tm.tokenize(prompt=body.get("text"), input_ids=body.get("input_ids"),
                                               sampling_params=sampling, icl=body.get("icl"))
            if stream and len(inputs) != 1:
                raise ValueError("stream: streaming takes a single prompt")
            if public_ids is not None and len(public_ids) != len(inputs):
                raise ValueError(f"rid: got {len(public_ids)} ids for {len(inputs)} prompts")
        except ValueError as e:
            err = from_value_error(e, openai_names=False)
            if err.param == "prompt":
                err.param = "text"
            raise err from None
        group = tm.submit(inputs, public_ids)
        if stream:
            return StreamingResponse(generate_stream(group), media_type="text/event-stream")
        results = await group.collect(request.is_disconnected)
        out = [generate_result(r, rid) for r, rid in zip(results, group.public_ids)]
        return out[0] if single else out

    if args.enable_metrics:
        @app.get("/metrics", dependencies=auth)
        async def metrics():
            data, content_type = tm.metrics.render()
            return Response(data, media_type=content_type)

    add_sglang_routes(app, tm, served_model_names, model_path, pids, auth,
                      lambda request: read_json(request, max_body_bytes))

    @app.post("/update_config", dependencies=auth)
    async def update_config(request: Request):
        """Live knobs (engine.knobs.LIVE_KNOBS) as a JSON object → every live knob's value afterwards."""
        body = await read_json(request, max_body_bytes)
        try:
            return await tm.update_config(body)
        except ValueError as e:
            raise from_value_error(e, openai_names=False) from None

    @app.post("/flush_cache", dependencies=auth)
    async def flush_cache():
        res = await tm.flush_cache()
        if not res.success:
            raise APIError(400, f"flush_cache: {res.message}")
        return {"success": True}

    return app
