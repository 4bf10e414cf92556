"""The knobs that can change in a running engine, with types, ranges and defaults (one table for all users:
`Engine.update_config`, `POST /update_config`, and autotune's search space). Pure Python."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from engine.config import EVICTION_POLICIES, SCHEDULE_POLICIES, ServerArgs
from engine.radix_cache.eviction import eviction_policy_names


@dataclass(frozen=True)
class Knob:
    name: str
    kind: type  # int, float or str
    low: float | None = None  # numeric range, inclusive
    high: float | None = None
    choices: tuple[str, ...] = ()  # the values samplers draw from
    log_scale: bool = False  # for samplers: draw log-uniformly
    accepted: Callable[[], tuple[str, ...]] | None = None  # what check() allows, when wider than choices

    def check(self, value: Any) -> Any:
        if self.kind is int and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"{self.name}: must be an integer (got {value!r})")
        if self.kind is float and (not isinstance(value, (int, float)) or isinstance(value, bool)):
            raise ValueError(f"{self.name}: must be a number (got {value!r})")
        allowed = self.accepted() if self.accepted is not None else self.choices
        if self.kind is str and value not in allowed:
            raise ValueError(f"{self.name}: must be one of {allowed} (got {value!r})")
        if self.low is not None and not self.low <= value <= self.high:
            raise ValueError(f"{self.name}: must be in [{self.low}, {self.high}] (got {value!r})")
        return float(value) if self.kind is float else value

    def default(self) -> Any:
        return getattr(ServerArgs(), self.name)


LIVE_KNOBS: dict[str, Knob] = {k.name: k for k in (
    Knob("max_running_requests", int, 1, 1024, log_scale=True),
    Knob("chunked_prefill_size", int, 64, 16384, log_scale=True),
    Knob("max_prefill_tokens", int, 64, 65536, log_scale=True),
    Knob("schedule_policy", str, choices=SCHEDULE_POLICIES),
    Knob("schedule_conservativeness", float, 0.05, 2.0),
    Knob("lpm_aging_seconds", float, 0.1, 60.0, log_scale=True),
    # Any registered policy may be switched to; searches draw from the built-ins.
    Knob("radix_eviction_policy", str, choices=EVICTION_POLICIES, accepted=eviction_policy_names),
    Knob("pair_policy", str, choices=("none", "table", "native")),
    Knob("pair_table_capacity", int, 1, 100_000, log_scale=True),
)}


def apply_knobs(args: ServerArgs, changes: dict[str, Any], max_running_cap: int | None = None) -> ServerArgs:
    """New args with `changes` applied; ValueError naming the first bad knob, and nothing changes then."""
    checked = {}
    for name, value in changes.items():
        knob = LIVE_KNOBS.get(name)
        if knob is None:
            raise ValueError(f"{name}: not a live knob (live: {', '.join(LIVE_KNOBS)})")
        checked[name] = knob.check(value)
    if max_running_cap is not None and checked.get("max_running_requests", 0) > max_running_cap:
        raise ValueError(f"max_running_requests: at most {max_running_cap}, the size the engine was started with")
    return args.replace(**checked)
