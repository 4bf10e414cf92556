"""Traces → block units: the compact form the cache simulator replays.

A unit is one block of `block_size` prompt tokens *together with its whole prefix*, interned to a small int:
two requests share unit u at position j exactly when their first (j + 1) * block_size tokens are equal (token
traces) or their hash_ids agree up to j (hash traces, whose ids are prefix-chained). Replaying units through a
RadixCache with page_size 1 is then the engine's tree with page_size = block_size, at 1/block_size of the key
length; capacities are divided by block_size.

Per request, mirroring the engine (engine/scheduler/kv_manager.py): the match covers ids[:-1], i.e. the first
(input_length - 1) // block_size units (`matchable`); after prefill the prompt's whole blocks, input_length //
block_size units, are inserted. The last partial block is never cached.
"""
from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from bench.cachesim.traces import TraceRequest
from engine.pair.render import IclExample, IclPrompt


class UnitInterner:
    """(parent unit, block content) → unit id, ids 1, 2, ... (0 stands for the empty prefix)."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._ids: dict = {}
        self._parent = array("i", [0])  # unit -> parent unit, to check that hash_ids are prefix-chained

    def __len__(self) -> int:
        return len(self._parent) - 1

    def of_tokens(self, token_ids: Sequence[int], num_units: int) -> list[int]:
        """Units of the first num_units whole blocks of token_ids."""
        bs, ids, out, parent = self.block_size, self._ids, [], 0
        for j in range(num_units):
            key = (parent, token_ids[j] if bs == 1 else tuple(token_ids[j * bs:(j + 1) * bs]))
            unit = ids.get(key)
            if unit is None:
                unit = ids[key] = len(self._parent)
                self._parent.append(parent)
            out.append(unit)
            parent = unit
        return out

    def of_hashes(self, hash_ids: Sequence[int], num_units: int) -> list[int]:
        """Units of hash_ids[:num_units]; ValueError if an id shows up under two different prefixes."""
        ids, out, parent = self._ids, [], 0
        for h in hash_ids[:num_units]:
            unit = ids.get(h)
            if unit is None:
                unit = ids[h] = len(self._parent)
                self._parent.append(parent)
            elif self._parent[unit] != parent:
                raise ValueError(f"hash_ids: id {h} follows two different prefixes; hash_ids must be chained "
                                 "(id i must identify blocks 0..i, as block_hashes and Mooncake's ids do)")
            out.append(unit)
            parent = unit
        return out


@dataclass
class UnitRequest:
    """What one replay step needs. units: the insert units (input_length // block_size of them); the first
    `matchable` are looked up. seg_units: {unit offset: example id}; boundaries: unit offsets of block ends."""

    timestamp: float
    input_length: int
    output_length: int
    units: array  # of "i"
    matchable: int
    boundaries: tuple[int, ...] = ()
    seg_units: dict[int, str] | None = None
    example_ids: tuple[str, ...] = ()
    icl: IclPrompt | None = None  # set when the request can be refined by PAIR (token traces with examples)


@dataclass
class UnitTrace:
    block_size: int
    interner: UnitInterner
    requests: list[UnitRequest] = field(default_factory=list)

    @property
    def query_tokens(self) -> int:
        return sum(r.input_length for r in self.requests)


def unit_counts(input_length: int, block_size: int) -> tuple[int, int]:
    """(matchable, insert) unit counts of a prompt of input_length tokens."""
    return max(input_length - 1, 0) // block_size, input_length // block_size


def icl_prompt(req: TraceRequest, refine: str) -> IclPrompt:
    """The request as the engine's IclPrompt: head = tokens before segments[0], example i = the tokens up to
    segments[i + 1], tail = the rest. An example's `input` is its id (the table policy's identity)."""
    ids, seg = req.token_ids, req.segments
    examples = tuple(IclExample(eid, eid, tpl, tuple(ids[a:b]))
                     for eid, tpl, a, b in zip(req.example_ids, req.example_templates, seg, seg[1:]))
    return IclPrompt(tuple(ids[:seg[0]]), examples, tuple(ids[seg[-1]:]), refine)


def make_unit_request(interner: UnitInterner, req: TraceRequest) -> UnitRequest:
    """Units of a trace request (its own prompt, examples in trace order)."""
    if req.token_ids is None:
        return unit_request(interner, req.timestamp, req.output_length, hash_ids=req.hash_ids,
                            input_length=req.input_length, boundaries=req.segments or ())
    seg_ids = list(zip((req.segments or ())[1:], req.example_ids or ()))
    return unit_request(interner, req.timestamp, req.output_length, token_ids=req.token_ids,
                        boundaries=req.segments or (), seg_ids=seg_ids)


def unit_request(interner: UnitInterner, timestamp: float, output_length: int, *,
                 token_ids: Sequence[int] | None = None, hash_ids: Sequence[int] | None = None,
                 input_length: int | None = None, boundaries: Sequence[int] = (),
                 seg_ids: Sequence[tuple[int, str]] = ()) -> UnitRequest:
    """Units of one prompt given by token_ids, or by hash_ids + input_length; boundaries and seg_ids
    ((end offset, example id) pairs) are token offsets. Two segment ends inside one block keep the later id
    (the engine's tree would file both on that node; only sub-block examples can collide)."""
    bs = interner.block_size
    if token_ids is not None:
        length = len(token_ids)
        matchable, insert = unit_counts(length, bs)
        units = interner.of_tokens(token_ids, insert)
    else:
        length = input_length
        matchable, insert = unit_counts(length, bs)
        insert = min(insert, len(hash_ids))
        matchable = min(matchable, insert)
        units = interner.of_hashes(hash_ids, insert)
    # A segment end inside a block lands on the block before it, as the engine's tree rounds offsets down.
    seg_units = {offset // bs: sid for offset, sid in seg_ids} if seg_ids else None
    return UnitRequest(timestamp, length, output_length, array("i", units), matchable,
                       tuple(b // bs for b in boundaries), seg_units, tuple(sid for _, sid in seg_ids))


def to_units(requests: Iterable[TraceRequest], block_size: int, pair: str = "none",
             progress: bool = False) -> UnitTrace:
    """Units of every request, sorted by timestamp (stable). pair="table" applies InferLog's table policy here
    (it does not look at the cache, so every replay sees the same refined prompts; the requests must then
    come in time order); "native" keeps each ICL request's IclPrompt so a replay can refine it against its
    own tree. Streams: only the units are kept, not the requests' token or hash lists."""
    from tqdm import tqdm

    from engine.pair.refiner import PairRefiner

    if pair not in ("none", "table", "native"):
        raise ValueError(f"pair: must be none, table or native (got {pair!r})")
    out = UnitTrace(block_size, UnitInterner(block_size))
    refiner = PairRefiner() if pair == "table" else None
    last_time = float("-inf")
    in_order = True
    for req in tqdm(requests, desc="units", disable=not progress, mininterval=2, unit="req"):
        in_order = in_order and req.timestamp >= last_time
        last_time = req.timestamp
        if pair != "none" and req.is_icl:
            prompt = icl_prompt(req, pair)
            if refiner is not None:
                if not in_order:
                    raise ValueError("timestamp: pair=table needs the trace in time order")
                ids, boundaries, seg_ids = prompt.assemble(refiner.refine(None, prompt).examples)
                unit_req = unit_request(out.interner, req.timestamp, req.output_length, token_ids=ids,
                                        boundaries=boundaries, seg_ids=seg_ids)
            else:
                unit_req = make_unit_request(out.interner, req)
                unit_req.icl = prompt
        else:
            unit_req = make_unit_request(out.interner, req)
        out.requests.append(unit_req)
    if not in_order:
        out.requests.sort(key=lambda r: r.timestamp)
    return out
