"""Logprobs in the response shapes clients expect, from the engine's [logprob, token id] pairs.

- SGLang (`/generate` meta_info): `input_token_logprobs` / `output_token_logprobs` as [logprob, token id,
  text | None] lists, `input_top_logprobs` / `output_top_logprobs` as a list of those per position (None where
  nothing was asked); text only with `return_text_in_logprobs`.
- OpenAI chat: `choices[].logprobs = {"content": [{"token", "logprob", "bytes", "top_logprobs": [{"token",
  "logprob", "bytes"}]}]}`.
- OpenAI completions: `choices[].logprobs = {"tokens", "token_logprobs", "top_logprobs": [{token: logprob}],
  "text_offset"}`.
A token's text is the tokenizer's decode of it alone; its bytes are the token's own bytes (byte-level BPE
tokens map back to raw bytes, so a token holding half of a UTF-8 character still gets its exact bytes).
"""
from __future__ import annotations

from typing import Any

from engine.logprob_options import LogprobAccumulator

Pieces = dict[int, tuple[str, list[int]]]  # token id → (text, UTF-8 bytes)


def _byte_decoder() -> dict[str, int]:
    """GPT-2 byte-level BPE's printable stand-in character → byte."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


_BYTE_DECODER = _byte_decoder()


def token_pieces(tokenizer, ids: list[int], cache: Pieces) -> Pieces:
    """(text, bytes) of each distinct id, memoised in `cache` (call from the thread that owns the tokenizer)."""
    out: Pieces = {}
    for tok in ids:
        if tok not in cache:
            text = tokenizer.decode([tok])
            raw = tokenizer.convert_ids_to_tokens(tok)
            if isinstance(raw, str) and raw and all(ch in _BYTE_DECODER for ch in raw):
                data = [_BYTE_DECODER[ch] for ch in raw]
            else:
                data = list(text.encode("utf-8"))
            cache[tok] = (text, data)
        out[tok] = cache[tok]
    return out


def logprob_token_ids(acc: LogprobAccumulator) -> list[int]:
    """Every token id the accumulated logprobs mention (for `token_pieces`)."""
    ids: set[int] = set()
    for key, items in acc.lists.items():
        for item in items:
            if item is None:
                continue
            pairs = item if key.endswith("top_logprobs") else [item]
            ids.update(p[1] for p in pairs)
    return sorted(ids)


def sglang_meta(acc: LogprobAccumulator | None, pieces: Pieces | None) -> dict[str, list]:
    """The four SGLang meta_info lists; `pieces` given → texts filled (return_text_in_logprobs)."""
    acc = acc or LogprobAccumulator()
    return acc.meta_info(None if pieces is None else (lambda t: pieces[t][0]))


def openai_chat(token_lps: list, top_lps: list, pieces: Pieces) -> dict[str, Any]:
    def entry(pair: list) -> dict[str, Any]:
        text, data = pieces[pair[1]]
        return {"token": text, "logprob": pair[0], "bytes": data}

    content = []
    for pair, top in zip(token_lps, top_lps):
        content.append({**entry(pair), "top_logprobs": [entry(p) for p in top] if top else []})
    return {"content": content}


def openai_completion(token_lps: list, top_lps: list, pieces: Pieces, text_offset: int = 0) -> dict[str, Any]:
    tokens, offsets, tops = [], [], []
    for pair, top in zip(token_lps, top_lps):
        text = pieces[pair[1]][0]
        tokens.append(text)
        offsets.append(text_offset)
        text_offset += len(text)
        tops.append({pieces[p[1]][0]: p[0] for p in top} if top else None)
    return {"tokens": tokens, "token_logprobs": [p[0] for p in token_lps], "top_logprobs": tops,
            "text_offset": offsets}
