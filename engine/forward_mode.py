"""The kind of forward step: shared by the scheduler (which builds steps) and the device layer (which runs
them), owned by neither. Pure Python."""
from __future__ import annotations

import enum


class ForwardMode(enum.Enum):
    EXTEND = "extend"  # prefill chunks (new tokens attend to a cached prefix and causally to themselves)
    DECODE = "decode"  # exactly one new token per request
    MIXED = "mixed"  # EXTEND requests first, then one decode token for each running request (enable_mixed_chunk)


def default_num_extend(mode: ForwardMode, num_reqs: int) -> int:
    """How many leading requests of an EXTEND or DECODE batch extend (a MIXED batch must say)."""
    assert mode is not ForwardMode.MIXED, "a mixed batch names its number of extend requests"
    return num_reqs if mode is ForwardMode.EXTEND else 0
