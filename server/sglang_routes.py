"""SGLang's native server routes beside /generate: what sglang-router and SGLang clients probe and call.

sglang-router (0.3.x) registers a worker by GET /health, then reads /server_info and /model_info (falling back
to /get_server_info and /get_model_info on 404) for model_path, tokenizer_path, served_model_name, model_type
and architectures; it polls GET /get_load (a list per data-parallel rank of {dp_rank, num_reqs,
num_waiting_reqs, num_tokens}) for load balancing, GET /health_generate for deep health, and fans POST
/flush_cache out. Routes here:

  GET  /health_generate            a 1-token generation through the whole pipeline: 200, or 503
  GET  /model_info, /get_model_info   model_path, tokenizer_path, is_generation, model_type, architectures, ...
  GET  /server_info, /get_server_info (= /stats)   SGLang's flat keys (every server arg at the top level,
                                   model_path, tokenizer_path, tp_size, dp_size, version, max_total_tokens, ...)
                                   beside the scheduler stats, `server_args` and `pids`
  GET  /get_load                   [{dp_rank, num_reqs, num_waiting_reqs, num_tokens}]
  POST /tokenize (/v1/tokenize)    {prompt | messages, add_special_tokens?} → {tokens, count, max_model_len}
  POST /detokenize (/v1/detokenize)  {tokens} → {text, prompt}
  POST /abort_request              {rid} or {abort_all: true}: those requests end with finish_reason abort
  GET  /version                    {version}

A replica that is shutting down or lost a child (tm.dead_reason) answers every probe with 503, so a router
stops sending it work.
"""
from __future__ import annotations

import asyncio
import dataclasses
import importlib.metadata
import json
import os
from typing import Any, Callable

from fastapi import FastAPI, Request

from server.errors import APIError, from_value_error
from server.openai_api import chat_messages
from server.tokenizer_manager import TokenizerManager

HEALTH_GENERATE_TIMEOUT_S = 20.0


def pairserve_version() -> str:
    try:
        return importlib.metadata.version("pairserve")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def model_facts(model_path: str) -> dict[str, Any]:
    """model_type and architectures from the checkpoint's config.json (read once, at startup)."""
    try:
        with open(os.path.join(model_path, "config.json")) as f:
            cfg = json.load(f)
    except (OSError, ValueError):
        cfg = {}
    return {"model_type": cfg.get("model_type"), "architectures": cfg.get("architectures")}


def add_sglang_routes(app: FastAPI, tm: TokenizerManager, names: tuple[str, ...], model_path: str,
                      pids: dict[str, int], auth: list, admin: list, probe: list, read_json: Callable) -> None:
    """`auth`, `admin`, `probe`: the route dependencies of server/auth.py (any tenant key; the admin key; open
    with --metrics-public, like /health)."""
    facts = model_facts(model_path)
    version = pairserve_version()

    def alive() -> None:
        refusal = tm.unavailable()  # a dead child, or draining for shutdown: the router must look elsewhere
        if refusal is not None:
            raise refusal

    @app.get("/health_generate", dependencies=probe)
    async def health_generate(request: Request):
        alive()
        inputs, _ = await tm.tokenize(input_ids=[0], sampling_params={"max_new_tokens": 1, "temperature": 0,
                                                                       "ignore_eos": True})
        group = tm.submit(inputs)
        try:
            await asyncio.wait_for(group.collect(request.is_disconnected), HEALTH_GENERATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            raise APIError(503, f"health_generate: no token within {HEALTH_GENERATE_TIMEOUT_S:.0f} s") from None
        return {"status": "ok"}

    async def model_info():
        alive()
        return {"model_path": model_path, "tokenizer_path": model_path, "is_generation": True,
                "preferred_sampling_params": None, "weight_version": "default", "has_image_understanding": False,
                "has_audio_understanding": False, "served_model_name": names[0], "served_model_names": list(names),
                "max_model_len": tm.context_len, **facts}

    for path in ("/model_info", "/get_model_info"):
        app.get(path, dependencies=auth)(model_info)

    async def server_info():
        alive()
        stats = await tm.get_stats()
        public_args = {k: v for k, v in dataclasses.asdict(tm.args).items() if k not in ("api_key", "admin_api_key")}
        sglang_keys = {
            "model_path": model_path, "tokenizer_path": model_path, "served_model_name": names[0],
            "served_model_names": list(names), "version": version, "context_length": tm.context_len,
            "max_total_tokens": stats.get("kv_capacity_tokens"), "mem_fraction_static": tm.args.mem_fraction,
            "random_seed": tm.args.seed, "max_req_input_len": tm.context_len - 1, "is_generation": True,
        }
        return {**public_args, **stats, **sglang_keys, "context_len": tm.context_len, "server_args": public_args,
                "pids": {"server": os.getpid(), **pids}}

    for path in ("/server_info", "/get_server_info", "/stats"):
        app.get(path, dependencies=auth)(server_info)

    @app.get("/get_load", dependencies=auth)
    async def get_load():
        alive()
        s = await tm.get_stats()
        used = s["kv_capacity_tokens"] - s["kv_free_tokens"] - s.get("cache_evictable_tokens", 0)
        return [{"dp_rank": 0, "num_reqs": s["num_running"] + s["num_waiting"],
                 "num_waiting_reqs": s["num_waiting"], "num_tokens": used}]

    async def tokenize(request: Request):
        body = await read_json(request)
        add_special = body.get("add_special_tokens", False)
        if not isinstance(add_special, bool):
            raise APIError(400, "add_special_tokens: must be a boolean", param="add_special_tokens")
        prompt, messages = body.get("prompt"), body.get("messages")
        if (prompt is None) == (messages is None):
            raise APIError(400, "prompt: give exactly one of prompt or messages", param="prompt")
        if messages is not None:
            try:
                prompt = await tm.render_chat(chat_messages(body))
            except ValueError as e:
                raise from_value_error(e, openai_names=True, prompt_param="messages") from None
        if not isinstance(prompt, str):
            raise APIError(400, "prompt: must be a string", param="prompt")
        tokens = await tm.on_worker(lambda: list(tm.tokenizer.encode(prompt, add_special_tokens=add_special)))
        return {"tokens": tokens, "count": len(tokens), "max_model_len": tm.context_len}

    async def detokenize(request: Request):
        body = await read_json(request)
        tokens = body.get("tokens")
        if not isinstance(tokens, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in tokens):
            raise APIError(400, "tokens: must be a list of token ids", param="tokens")
        skip = body.get("skip_special_tokens", True)
        if not isinstance(skip, bool):
            raise APIError(400, "skip_special_tokens: must be a boolean", param="skip_special_tokens")
        vocab = len(tm.tokenizer)
        if any(t < 0 or t >= vocab for t in tokens):
            raise APIError(400, f"tokens: token id out of range [0, {vocab})", param="tokens")
        text = await tm.on_worker(lambda: tm.tokenizer.decode(tokens, skip_special_tokens=skip))
        return {"text": text, "prompt": text}  # SGLang's key and vLLM's

    for prefix in ("", "/v1"):
        app.post(prefix + "/tokenize", dependencies=auth)(tokenize)
        app.post(prefix + "/detokenize", dependencies=auth)(detokenize)

    @app.post("/abort_request", dependencies=admin)  # any request's rid, or all of them: not a tenant's call
    async def abort_request(request: Request):
        body = await read_json(request)
        rid, abort_all = body.get("rid"), body.get("abort_all", False)
        if not isinstance(abort_all, bool):
            raise APIError(400, "abort_all: must be a boolean", param="abort_all")
        if not abort_all and (not isinstance(rid, str) or not rid):
            raise APIError(400, "rid: must be a request id (or send abort_all: true)", param="rid")
        return {"aborted": tm.abort_request(rid, abort_all)}

    @app.get("/version")
    async def get_version():
        return {"version": version}
