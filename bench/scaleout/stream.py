"""The log-parsing stream bench.scaleout sends: InferLog's per-system streams (bench.logparse.stream.build_requests),
interleaved at random across systems (each system keeps its stream order), as chat bodies in InferLog's
four-message layout, which pairserve serves as `icl` requests (PAIR refines them under its --pair-policy).
A router forwards only the messages, so this is the one request form that reaches PAIR through it."""
from __future__ import annotations

import random
from dataclasses import dataclass

from bench.logparse.stream import build_requests
from engine.pair.render import render_messages


@dataclass
class StreamRequest:
    system: str
    index: int  # position in its system's stream
    body: dict  # /v1/chat/completions body (without "model")
    prompt_tokens: int  # of the unrefined prompt, from the tokenizer


def build_stream(tokenizer, data: str, systems: list[str], limit: int | None, output_len: str,
                 num_requests: int | None, seed: int = 0) -> list[StreamRequest]:
    per_system = []
    for system in systems:
        icls, sps, records = build_requests(tokenizer, data, system, limit, output_len)
        reqs = []
        for i, (icl, sp, rec) in enumerate(zip(icls, sps, records)):
            body = {"messages": render_messages(icl), "max_tokens": sp["max_new_tokens"],
                    "temperature": sp["temperature"]}
            if sp.get("ignore_eos"):
                body["ignore_eos"] = True
            reqs.append(StreamRequest(system, i, body, rec.prompt_tokens))
        per_system.append(reqs)
    order = [i for i, reqs in enumerate(per_system) for _ in reqs]
    random.Random(seed).shuffle(order)
    cursors = [0] * len(per_system)
    out = []
    for i in order:
        out.append(per_system[i][cursors[i]])
        cursors[i] += 1
    return out[:num_requests] if num_requests else out
