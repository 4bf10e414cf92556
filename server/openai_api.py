"""`/v1/completions` and `/v1/chat/completions`: OpenAI request bodies → engine requests → OpenAI responses.

Sampling: max_tokens (or max_completion_tokens, on both routes) → max_new_tokens, temperature, top_p, seed
(sampling_seed), stop, plus the SGLang extras top_k, min_p, ignore_eos, stop_token_ids, skip_special_tokens,
no_stop_trim at the top level. max_tokens defaults to 16 for completions (as OpenAI) and to the rest of the context
for chat; an explicit value that does not fit the context is a 400. Every other field is screened by
server.api_fields (honored / documented no-op / 400 naming it; unknown fields are logged as ignored).

Extension: `icl` (engine.icl) in a chat request replaces `messages` (omit them or send []); the engine renders
and refines the prompt, and each choice carries `meta_info` with `icl_order` and `icl_substituted`. Messages in
InferLog's exact four-message layout (engine.pair.render.icl_from_messages) are served as that icl request too,
with the server's --pair-policy: the prompt text is the same, and PAIR works behind routers that forward messages
only (sglang-router).

n > 1 is served by submitting n engine requests per prompt (choice index = prompt_index * n + j); with a seed,
choice j samples with seed + j so the choices differ. usage counts each prompt (and its cached tokens) once.
"""
from __future__ import annotations

import dataclasses
import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import Request
from fastapi.responses import JSONResponse, StreamingResponse

from engine.pair.render import icl_from_messages
from server.api_fields import CHAT_FIELDS, COMPLETION_FIELDS, screen
from server.errors import APIError, from_value_error
from server.request_group import ReqEvent, ReqResult, RequestGroup
from server.tokenizer_manager import TokenizerManager

MAX_N = 16
COMPLETION_DEFAULT_MAX_TOKENS = 16
SGLANG_EXTRAS = ("top_k", "min_p", "ignore_eos", "stop_token_ids", "skip_special_tokens", "no_stop_trim")


def sse(obj: Any) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False, separators=(',', ':'))}\n\n"


SSE_DONE = "data: [DONE]\n\n"


def finish_reason_name(reason: dict | None) -> str | None:
    return None if reason is None else reason.get("type")


class OpenAIHandler:
    def __init__(self, tm: TokenizerManager, served_model_names: tuple[str, ...]):
        self.tm = tm
        self.model_names = served_model_names

    # --- parsing --------------------------------------------------------------------------------------
    def _request_id(self, body: dict, prefix: str) -> str:
        """The response id: the client's SGLang `rid` when it sent one, else a fresh `<prefix>-<hex>`."""
        rid = body.get("rid")
        if rid is None:
            return f"{prefix}-{uuid.uuid4().hex}"
        if not isinstance(rid, str) or not rid:
            raise APIError(400, "rid: must be a non-empty string", param="rid")
        return rid

    def _model(self, body: dict) -> str:
        """The served name the request asked for (responses echo it), or the first; 404 for another model."""
        model = body.get("model")
        if model is None:
            return self.model_names[0]
        if model not in self.model_names:
            raise APIError(404, f"model: {model!r} does not exist; this server serves {list(self.model_names)}",
                           param="model", code="model_not_found")
        return model

    def _check_common(self, body: dict, chat: bool, rid: str) -> tuple[int, bool, bool]:
        """Screen the fields (server.api_fields), validate n / stream; return (n, stream, include_usage)."""
        screen(body, CHAT_FIELDS if chat else COMPLETION_FIELDS, rid)
        n = body.get("n")
        n = 1 if n is None else n
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_N:
            raise APIError(400, f"n: must be an integer in [1, {MAX_N}] (got {n!r})", param="n")
        stream = body.get("stream", False) if body.get("stream") is not None else False
        if not isinstance(stream, bool):
            raise APIError(400, f"stream: must be a boolean (got {stream!r})", param="stream")
        opts = body.get("stream_options")
        if opts is not None and not isinstance(opts, dict):
            raise APIError(400, "stream_options: must be an object", param="stream_options")
        include_usage = (opts or {}).get("include_usage", False)
        if not isinstance(include_usage, bool):
            raise APIError(400, "stream_options.include_usage: must be a boolean", param="stream_options")
        return n, stream, include_usage

    @staticmethod
    def _sampling(body: dict, max_tokens: Any) -> dict:
        sp: dict[str, Any] = {}
        if max_tokens is not None:
            sp["max_new_tokens"] = max_tokens
        for key in ("temperature", "top_p", "seed", "stop", *SGLANG_EXTRAS):
            if body.get(key) is not None:
                sp[key] = body[key]
        if body.get("sampling_seed") is not None:  # SGLang's name
            if sp.setdefault("seed", body["sampling_seed"]) != body["sampling_seed"]:
                raise APIError(400, "sampling_seed: conflicts with seed", param="sampling_seed")
        return sp

    @staticmethod
    def _max_tokens(body: dict) -> Any:
        """max_completion_tokens (OpenAI's newer name) or max_tokens; both given must agree."""
        new, old = body.get("max_completion_tokens"), body.get("max_tokens")
        if new is not None and old is not None and new != old:
            raise APIError(400, "max_completion_tokens: conflicts with max_tokens; send one",
                           param="max_completion_tokens")
        return old if new is None else new

    def _finalize(self, inputs: list, explicit_max: bool, default_max: int | None, n: int) -> list:
        """Fix max_new_tokens against the context and expand each prompt into n requests."""
        out = []
        for inp in inputs:
            left = self.tm.context_len - len(inp.input_ids)
            sp = inp.sampling
            if not explicit_max:
                sp = dataclasses.replace(sp, max_new_tokens=left if default_max is None else min(default_max, left))
            sp.validate(left)
            for j in range(n):
                seed = None if sp.seed is None else sp.seed + j
                rid = inp.rid if j == 0 else uuid.uuid4().hex
                out.append(dataclasses.replace(inp, rid=rid, sampling=dataclasses.replace(sp, seed=seed)))
        return out

    async def _prepare(self, body: dict, prompt_param: str, max_tokens: Any, default_max: int | None, n: int,
                       rid: str, prompt=None, input_ids=None, icl=None) -> RequestGroup:
        try:
            inputs, _ = await self.tm.tokenize(prompt=prompt, input_ids=input_ids,
                                               sampling_params=self._sampling(body, max_tokens), icl=icl)
            inputs = self._finalize(inputs, max_tokens is not None, default_max, n)
        except ValueError as e:
            raise from_value_error(e, openai_names=True, prompt_param=prompt_param) from None
        return self.tm.submit(inputs, [rid] * len(inputs))

    # --- routes ---------------------------------------------------------------------------------------
    async def completions(self, body: dict, request: Request):
        rid = self._request_id(body, "cmpl")
        model = self._model(body)
        n, stream, include_usage = self._check_common(body, False, rid)
        prompt = body.get("prompt")
        if prompt is None:
            raise APIError(400, "prompt: missing", param="prompt")
        ids_like = isinstance(prompt, list) and bool(prompt) and (
            all(isinstance(t, int) for t in prompt) or all(isinstance(p, list) for p in prompt))
        group = await self._prepare(body, "prompt", self._max_tokens(body), COMPLETION_DEFAULT_MAX_TOKENS, n, rid,
                                    prompt=None if ids_like else prompt, input_ids=prompt if ids_like else None)
        meta = {"id": rid, "created": int(time.time()), "model": model}
        if stream:
            return StreamingResponse(self._stream(group, meta, n, include_usage, chat=False),
                                     media_type="text/event-stream")
        results = await group.collect(request.is_disconnected)
        choices = [{"index": i, "text": r.text, "logprobs": None, "finish_reason": finish_reason_name(r.finish_reason)}
                   for i, r in enumerate(results)]
        return JSONResponse({**meta, "object": "text_completion", "choices": choices, "usage": usage(results, n)})

    async def chat(self, body: dict, request: Request):
        rid = self._request_id(body, "chatcmpl")
        model = self._model(body)
        n, stream, include_usage = self._check_common(body, True, rid)
        icl = body.get("icl")
        text = None
        if icl is not None:
            # extension: the engine renders the ICL prompt itself (and refines it), so it replaces messages
            if body.get("messages"):
                raise APIError(400, "icl: cannot be combined with non-empty messages", param="icl")
        else:
            text, icl = await self._render_messages(body)
        group = await self._prepare(body, "icl" if icl is not None else "messages", self._max_tokens(body), None,
                                    n, rid, prompt=text, icl=icl)
        meta = {"id": rid, "created": int(time.time()), "model": model}
        if stream:
            return StreamingResponse(self._stream(group, meta, n, include_usage, chat=True),
                                     media_type="text/event-stream")
        results = await group.collect(request.is_disconnected)
        choices = [{"index": i, "message": {"role": "assistant", "content": r.text}, "logprobs": None,
                    "finish_reason": finish_reason_name(r.finish_reason), **_meta_extension(r)}
                   for i, r in enumerate(results)]
        return JSONResponse({**meta, "object": "chat.completion", "choices": choices, "usage": usage(results, n)})

    async def _render_messages(self, body: dict) -> tuple[str | None, dict | None]:
        """(prompt text, None), or (None, icl) for messages in InferLog's layout asked for plainly."""
        messages = chat_messages(body)
        continue_final = body.get("continue_final_message") or False
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(continue_final, bool):
            raise APIError(400, "continue_final_message: must be a boolean", param="continue_final_message")
        if not isinstance(kwargs, dict):
            raise APIError(400, "chat_template_kwargs: must be an object", param="chat_template_kwargs")
        if not continue_final and not kwargs:
            icl = icl_from_messages(messages)
            if icl is not None:
                return None, icl
        try:
            return await self.tm.render_chat(messages, continue_final, kwargs), None
        except ValueError as e:
            raise from_value_error(e, openai_names=True, prompt_param="messages") from None

    # --- streaming ------------------------------------------------------------------------------------
    async def _stream(self, group: RequestGroup, meta: dict, n: int, include_usage: bool,
                      chat: bool) -> AsyncIterator[str]:
        """SSE frames; a client that goes away cancels this generator and `finally` aborts its requests."""
        obj = "chat.completion.chunk" if chat else "text_completion"
        last: dict[int, ReqEvent] = {}

        def chunk(index: int, delta: str, reason: str | None, role: bool = False) -> str:
            if chat:
                d: dict[str, Any] = {"role": "assistant", "content": ""} if role else (
                    {"content": delta} if delta else {})
                choice = {"index": index, "delta": d, "logprobs": None, "finish_reason": reason}
            else:
                choice = {"index": index, "text": delta, "logprobs": None, "finish_reason": reason}
            return sse({**meta, "object": obj, "choices": [choice]})

        try:
            if chat:
                for i in range(len(group.rids)):
                    yield chunk(i, "", None, role=True)
            async for ev in group.events():
                if ev.error is not None:
                    yield sse(ev.error.body())
                    break
                if ev.finished:
                    last[ev.index] = ev
                reason = finish_reason_name(ev.finish_reason) if ev.finished else None
                if chat and ev.delta:
                    yield chunk(ev.index, ev.delta, None)
                    if reason is not None:
                        yield chunk(ev.index, "", reason)
                elif ev.delta or reason is not None:
                    yield chunk(ev.index, ev.delta, reason)
            else:
                if include_usage:
                    results = [_event_result(last[i]) for i in range(len(group.rids))]
                    yield sse({**meta, "object": obj, "choices": [], "usage": usage(results, n)})
            yield SSE_DONE
        finally:
            group.abort()


def _meta_extension(r: ReqResult) -> dict[str, Any]:
    """ICL requests' refinement (icl_order, icl_substituted) as a per-choice `meta_info` extension field."""
    return {"meta_info": dict(r.extra)} if r.extra else {}


def _event_result(ev: ReqEvent) -> ReqResult:
    return ReqResult("", [], ev.finish_reason, ev.prompt_tokens, ev.completion_tokens, ev.cached_tokens, ev.extra, 0.0)


def usage(results: list[ReqResult], n: int) -> dict[str, Any]:
    """OpenAI usage; a prompt sampled n times counts once (its first choice's prompt and cached tokens)."""
    firsts = results[::n]
    prompt_tokens = sum(r.prompt_tokens for r in firsts)
    completion_tokens = sum(r.completion_tokens for r in results)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": sum(r.cached_tokens for r in firsts)}}


def chat_messages(body: dict) -> list[dict[str, str]]:
    """Validated messages as {"role", "content": str}; content parts of type text are joined."""
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise APIError(400, "messages: must be a non-empty list", param="messages")
    out = []
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str):
            raise APIError(400, f"messages[{i}]: must be an object with a string 'role'", param="messages")
        content = m.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                raise APIError(400, f"messages[{i}].content: only text parts are supported", param="messages")
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise APIError(400, f"messages[{i}].content: must be a string or a list of text parts",
                           param="messages")
        out.append({"role": m["role"], "content": content})
    return out
