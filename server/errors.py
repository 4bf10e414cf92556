"""OpenAI-style API errors: `{"error": {"message", "type", "param", "code"}}` with an HTTP status."""
from __future__ import annotations

from types import MappingProxyType
from typing import Any

from fastapi.responses import JSONResponse

ERROR_TYPES = MappingProxyType({
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    500: "server_error",
    503: "service_unavailable",
})

# Engine (SGLang) field names → the OpenAI request field a client sent.
OPENAI_PARAM_NAMES = MappingProxyType({"max_new_tokens": "max_tokens", "min_new_tokens": "min_tokens"})


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code if self.code is not None else self.status}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def from_value_error(e: ValueError, openai_names: bool, prompt_param: str = "prompt") -> APIError:
    """A 400 for a validation ValueError whose message starts with '<field>: ...'.

    `param` is that field: for OpenAI routes the sampling prefix is dropped and engine names become OpenAI
    names (max_new_tokens → max_tokens; the prompt field is `prompt_param`, e.g. 'messages' for chat).
    """
    message = str(e)
    head, sep, rest = message.partition(":")
    if not sep or " " in head:
        return APIError(400, message)
    param = head
    if openai_names:
        field = head.split(".", 1)[1] if head.startswith("sampling_params.") else head
        field = OPENAI_PARAM_NAMES.get(field, field)
        if field in ("prompt", "input_ids"):
            field = prompt_param
        param, message = field, f"{field}:{rest}"
    return APIError(400, message, param=param)
