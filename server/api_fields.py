"""Every request field of the APIs pairserve speaks, and what pairserve does with it: the no-silent-ignore rule.

Each field of OpenAI's completions and chat.completions (as the `openai` package types them), of SGLang's OpenAI
extras, of SGLang's /generate and of its `sampling_params` is in exactly one table below with one status:
- HONORED: it does what the API says;
- NOOP: accepted with any value because it cannot change the output here (`why` says why);
- REFUSED: 400 naming it, unless its value is one of `neutral` (the values that leave the feature off, which
  clients and routers send by default, e.g. `"logprobs": false`).
A field no table knows (neither OpenAI's nor SGLang's) is logged as ignored with the request id, as vLLM does,
so clients that add fields of their own keep working. tests/server/test_api_fields.py enumerates the `openai`
package's request types and fails on any field missing here.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Callable, Mapping

from server.errors import APIError

HONORED, NOOP, REFUSED = "honored", "no-op", "refused"
logger = logging.getLogger("pairserve.server")


@dataclass(frozen=True)
class Field:
    status: str
    why: str = ""
    # REFUSED only: values that leave the feature off (bools match bools only), or a predicate (value, body).
    neutral: tuple | Callable[[Any, dict], bool] = (None,)

    def accepts(self, value: Any, body: dict) -> bool:
        if self.status != REFUSED or value is None:
            return True
        if callable(self.neutral):
            return self.neutral(value, body)
        if isinstance(value, bool):
            return any(isinstance(v, bool) and v == value for v in self.neutral)
        return any(v is not None and not isinstance(v, bool) and v == value for v in self.neutral)


def honored(why: str = "") -> Field:
    return Field(HONORED, why)


def noop(why: str) -> Field:
    return Field(NOOP, why)


def refused(why: str, *neutral: Any) -> Field:
    return Field(REFUSED, why, (None, *neutral))


def _rank_zero(value: Any, body: dict) -> bool:
    return value == 0 and not isinstance(value, bool)


def _best_of_n(value: Any, body: dict) -> bool:
    return not isinstance(value, bool) and value in (1, body.get("n") or 1)


_OFF = (False,)
_PD = "prefill/decode disaggregation is not implemented"
_LORA = "LoRA adapters are not implemented"

# Shared by both OpenAI routes: the common OpenAI fields and SGLang's extras to them.
_COMMON = {
    "model": honored("must be one of --served-model-name's names (404 otherwise)"),
    "n": honored(), "seed": honored(), "stop": honored(), "stream": honored(), "stream_options": honored(),
    "temperature": honored(), "top_p": honored(), "max_tokens": honored(),
    "max_completion_tokens": honored("alias of max_tokens (also on /v1/completions); both given must agree"),
    "user": noop("end-user id for the provider's abuse monitoring; nothing here depends on it"),
    "frequency_penalty": honored(),
    "presence_penalty": honored(),
    "logit_bias": honored(),
    # SGLang's extras (its CompletionRequest / ChatCompletionRequest)
    "top_k": honored(), "min_p": honored(), "stop_token_ids": honored(), "no_stop_trim": honored(),
    "ignore_eos": honored(), "skip_special_tokens": honored(),
    "rid": honored("request id: named in logs, meta_info and /abort_request"),
    "min_tokens": honored(),
    "repetition_penalty": honored(),
    "regex": honored(),
    "ebnf": honored(),
    "json_schema": honored(),
    "response_format": honored(),
    "priority": honored(),
    "stop_regex": refused("stop regexes are not implemented", [], ""),
    "lora_path": refused(_LORA),
    "session_params": refused("sessions are not implemented", {}),
    "custom_params": refused("custom logit processors are not implemented", {}),
    "custom_logit_processor": refused("custom logit processors are not implemented", ""),
    "return_hidden_states": refused("hidden states are not returned", *_OFF),
    "return_routed_experts": refused("no MoE model is served", *_OFF),
    "bootstrap_host": refused(_PD), "bootstrap_port": refused(_PD), "bootstrap_room": refused(_PD),
    "bootstrap_pair_key": refused(_PD), "disagg_prefill_dp_rank": refused(_PD),
    "data_parallel_rank": Field(REFUSED, "dp_size is 1: only rank 0 exists", _rank_zero),
    "routed_dp_rank": Field(REFUSED, "dp_size is 1: only rank 0 exists", _rank_zero),
    "extra_key": refused("per-key prefix-cache isolation is not implemented", ""),
    "cache_salt": refused("per-key prefix-cache isolation is not implemented", ""),
    "custom_labels": noop("custom metric labels: the metrics carry model_name only; the output is the same"),
    "sampling_seed": honored("SGLang's name for seed"),
}

COMPLETION_FIELDS: Mapping[str, Field] = MappingProxyType({
    **_COMMON,
    "prompt": honored("text, list of texts, token ids, or lists of token ids"),
    "best_of": Field(REFUSED, "best-of-n reranking is not implemented (1 or n is accepted)", _best_of_n),
    "echo": refused("echoing the prompt is not implemented", *_OFF),
    "logprobs": honored(),
    "suffix": refused("insertion (suffix) is not implemented", ""),
    "return_cached_tokens_details": refused("usage.prompt_tokens_details.cached_tokens is always sent", *_OFF),
    "return_token_ids": refused("token ids are returned by /generate", *_OFF),
    "routed_experts_start_len": refused("no MoE model is served", 0),
    "images_config": refused("text-only models", {}),
    "session_id": refused("sessions are not implemented", ""),
    "ngram_corpus_id": refused("n-gram speculative decoding is not implemented", ""),
})

CHAT_FIELDS: Mapping[str, Field] = MappingProxyType({
    **_COMMON,
    "messages": honored("rendered by the model's chat template (--chat-template replaces it)"),
    "icl": honored("pairserve extension: ICL segments in place of messages (README, ICL requests)"),
    "logprobs": honored(),
    "top_logprobs": honored(),
    "tools": honored("rendered by the chat template; <tool_call> blocks in the output become tool_calls"),
    "tool_choice": honored("none / auto / required / a named function (the last two need the json_schema "
                           "constraint: 400 until the engine has it)"),
    "parallel_tool_calls": honored("false: only the first tool call is returned"),
    "functions": refused("deprecated by OpenAI: use tools", []),
    "function_call": refused("deprecated by OpenAI: use tool_choice", "none", "auto"),
    "audio": refused("text-only models"),
    "modalities": Field(REFUSED, "text-only models: only ['text']", lambda v, b: v == ["text"] or v == []),
    "metadata": noop("tags for OpenAI's stored completions; nothing is stored, the output is the same"),
    "store": noop("OpenAI's stored completions; nothing is stored, the output is the same"),
    "service_tier": noop("there is one tier; the output is the same"),
    "safety_identifier": noop("end-user id for the provider's abuse monitoring; the output is the same"),
    "prompt_cache_key": noop("a cache-routing hint; the radix cache matches prefixes by content itself"),
    "prompt_cache_retention": noop("cache retention hint; the radix cache keeps prefixes by its own policy"),
    "prompt_cache_options": noop("cache hints; the radix cache matches and keeps prefixes by its own policy"),
    "prediction": noop("Predicted Outputs only speed a response up; the output is the same without"),
    "moderation": refused("no moderation model is served", *_OFF),
    "reasoning_effort": refused("the served models have no reasoning-effort control"),
    "verbosity": refused("the served models have no verbosity control"),
    "web_search_options": refused("web search is not available", {}),
    "continue_final_message": honored("the last assistant message is continued, not closed"),
    "chat_template_kwargs": honored("passed to the chat template"),
    "separate_reasoning": noop("there is no reasoning parser (as SGLang without --reasoning-parser)"),
    "stream_reasoning": noop("there is no reasoning parser (as SGLang without --reasoning-parser)"),
})

# SGLang's /generate (GenerateReqInput), top level.
GENERATE_FIELDS: Mapping[str, Field] = MappingProxyType({
    "text": honored(), "input_ids": honored(), "sampling_params": honored(), "stream": honored(),
    "icl": honored("pairserve extension (README, ICL requests)"),
    "rid": honored("request id: meta_info.id, logs and /abort_request"),
    "tenant": refused("a request's tenant comes from its API key (--api-key-file), never from the body"),
    "model": honored("must be one of --served-model-name's names when given (the router sends null)"),
    "log_metrics": noop("health probes' flag; it only decides whether SGLang counts the request in metrics"),
    "no_logs": honored("the request is left out of --log-requests"),
    "conversation_id": noop("a tracking tag; the output is the same"),
    "custom_labels": noop("custom metric labels: the metrics carry model_name only; the output is the same"),
    "background": refused("background (stored) responses are not implemented", *_OFF),
    "return_logprob": honored(),
    "logprob_start_len": honored(),
    "top_logprobs_num": honored(),
    "token_ids_logprob": refused("logprobs of chosen token ids are not implemented (use top_logprobs_num)", []),
    "return_text_in_logprobs": honored(),
    "priority": honored(),
    "input_embeds": refused("embedding inputs are not implemented"),
    "image_data": refused("text-only models", []), "video_data": refused("text-only models", []),
    "audio_data": refused("text-only models", []),
    "modalities": refused("text-only models", []),
    "session_params": refused("sessions are not implemented", {}),
    "lora_path": refused(_LORA), "lora_id": refused(_LORA),
    "custom_logit_processor": refused("custom logit processors are not implemented", ""),
    "return_hidden_states": refused("hidden states are not returned", *_OFF),
    "return_routed_experts": refused("no MoE model is served", *_OFF),
    "return_bytes": refused("image generation is not served", *_OFF),
    "return_entropy": refused("entropies are not returned", *_OFF),
    "bootstrap_host": refused(_PD), "bootstrap_port": refused(_PD), "bootstrap_room": refused(_PD),
    "bootstrap_pair_key": refused(_PD),
    "data_parallel_rank": Field(REFUSED, "dp_size is 1: only rank 0 exists", _rank_zero),
    "routed_dp_rank": Field(REFUSED, "dp_size is 1: only rank 0 exists", _rank_zero),
    "extra_key": refused("per-key prefix-cache isolation is not implemented", ""),
    "cache_salt": refused("per-key prefix-cache isolation is not implemented", ""),
})

# SGLang's sampling_params object (/generate). Unknown keys stay a 400, as in SGLang.
SAMPLING_PARAM_FIELDS: Mapping[str, Field] = MappingProxyType({
    **{k: honored() for k in ("max_new_tokens", "temperature", "top_p", "top_k", "min_p", "stop", "stop_token_ids",
                              "ignore_eos", "skip_special_tokens", "no_stop_trim")},
    "seed": honored("pairserve's name; SGLang's is sampling_seed"),
    "sampling_seed": honored("SGLang's name for seed"),
    "stream_interval": noop("tokens per streamed chunk: the concatenated stream is the same"),
    "spaces_between_special_tokens": Field(
        REFUSED, "fast tokenizers always decode with spaces between special tokens", (None, True)),
    "n": Field(REFUSED, "/generate samples one output per prompt (use /v1/completions' n)", (None, 1)),
    "frequency_penalty": honored(),
    "presence_penalty": honored(),
    "repetition_penalty": honored(),
    "min_new_tokens": honored(),
    "logit_bias": honored(),
    "json_schema": honored(),
    "regex": honored(),
    "ebnf": honored(),
    "structural_tag": refused("structural tags are not implemented (json_schema, regex and ebnf are)", ""),
    "stop_regex": refused("stop regexes are not implemented", [], ""),
    "custom_params": refused("custom logit processors are not implemented", {}),
})


def screen(body: dict, table: Mapping[str, Field], rid: str, where: str = "") -> None:
    """Refuse (400 naming it) any REFUSED field set to a non-neutral value; log fields no table knows as ignored.

    `where` prefixes the field name in messages (e.g. 'sampling_params.')."""
    unknown = []
    for key, value in body.items():
        field = table.get(key)
        if field is None:
            unknown.append(key)
        elif not field.accepts(value, body):
            raise APIError(400, f"{where}{key}: not supported by this server ({field.why})", param=where + key)
    if unknown:
        logger.warning("request %s: ignoring unknown field(s) %s", rid, ", ".join(sorted(unknown)))


def sampling_from_sglang(sp: Any) -> Any:
    """SGLang's sampling_params → the engine's: refused keys checked, no-op keys and neutral values dropped,
    sampling_seed renamed to seed. Keys no table knows are passed on, so the engine names them in its 400."""
    if not isinstance(sp, dict):
        return sp
    out = {}
    for key, value in sp.items():
        field = SAMPLING_PARAM_FIELDS.get(key)
        if field is None or field.status == HONORED:
            out["seed" if key == "sampling_seed" else key] = value
        elif not field.accepts(value, sp):
            raise APIError(400, f"sampling_params.{key}: not supported by this server ({field.why})",
                           param=f"sampling_params.{key}")
    if "sampling_seed" in sp and "seed" in sp and sp["seed"] != sp["sampling_seed"]:
        raise APIError(400, "sampling_params.sampling_seed: conflicts with seed", param="sampling_params.seed")
    return out


def _describe(field: Field) -> str:
    if field.status == REFUSED:
        if callable(field.neutral):
            return f"400 unless off ({field.why})"
        offs = [v for v in field.neutral if v is not None]
        off = " or ".join("`" + (str(v).lower() if isinstance(v, bool) else repr(v)) + "`" for v in offs)
        return f"400 ({field.why})" + (f"; {off} and null accepted" if off else "; null accepted")
    if field.status == NOOP:
        return f"accepted, no-op: {field.why}"
    return "honored" + (f": {field.why}" if field.why else "")


def markdown_tables() -> str:
    """docs/api-fields.md's tables (regenerate with `python -m server.api_fields > docs/api-fields.md`)."""
    parts = ["# Request fields: honored, no-op, or refused\n",
             "Generated from `server/api_fields.py` by `python -m server.api_fields`; a test keeps them equal.",
             "Fields no table lists are accepted and logged as ignored, with the request id.\n"]
    for title, table in (("POST /v1/completions", COMPLETION_FIELDS), ("POST /v1/chat/completions", CHAT_FIELDS),
                         ("POST /generate", GENERATE_FIELDS), ("/generate's sampling_params", SAMPLING_PARAM_FIELDS)):
        parts += [f"## {title}\n", "| field | what pairserve does |", "|---|---|"]
        parts += [f"| `{name}` | {_describe(table[name])} |" for name in sorted(table)]
        parts.append("")
    return "\n".join(parts)


if __name__ == "__main__":
    print(markdown_tables(), end="")
