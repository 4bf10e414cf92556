"""Closed-loop replay and the tuning objective: apply knobs live, then measure a window of traffic.

`ClosedLoop` keeps C requests in flight against a target (C worker threads, each sending the next request of
the workload as soon as its previous one returns; the workload repeats when exhausted). It runs across
evaluations, like live traffic: `measure(knobs)` applies the knobs while requests are in flight (no restart),
discards every request sent before the change and the next `warmup` ones, then records the `window`
requests after them (or as many as finish within `max_window_s`; requests still in flight then count with
their age so far, a lower bound, so a stalled config cannot look fast).

Targets: `EngineTarget` (in-process `Engine`) and `ServerTarget` (a running server over HTTP:
`POST {url}/update_config` with the knob dict as JSON body, `POST {url}/generate` with
{"icl", "sampling_params"}; both answer 200 on success).
"""
from __future__ import annotations

import enum
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from autotune.workload import Workload


class ObjectiveKind(str, enum.Enum):
    P95 = "p95"  # minimise p95 end-to-end latency
    THROUGHPUT = "throughput"  # maximise requests/s, penalised when p95 exceeds the SLO


@dataclass(frozen=True)
class Objective:
    """Turns window metrics into one number to MINIMISE (`loss`) and back into its natural units (`value`).

    p95: loss = ln(p95 seconds). throughput: score = req/s * min(1, slo / p95); loss = -ln(score). Logs make
    tasks of different speeds comparable (a ratio is a difference) and `within` a fixed loss gap.
    """

    kind: ObjectiveKind = ObjectiveKind.P95
    slo_s: float | None = None
    clock: str = "wall"  # "wall", or "cpu": process CPU seconds (steady on a shared machine; engine only)

    def __post_init__(self) -> None:
        if self.kind is ObjectiveKind.THROUGHPUT and (self.slo_s is None or self.slo_s <= 0):
            raise ValueError("slo_s: the throughput objective needs a positive p95 SLO in seconds")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"clock: must be 'wall' or 'cpu' (got {self.clock!r})")

    def value(self, metrics: dict[str, float]) -> float:
        p95, rps = ("p95_s", "throughput_rps") if self.clock == "wall" else ("p95_cpu_s", "throughput_cpu_rps")
        if self.kind is ObjectiveKind.P95:
            return metrics[p95]
        return metrics[rps] * min(1.0, self.slo_s / metrics[p95])

    def loss(self, metrics: dict[str, float]) -> float:
        v = max(self.value(metrics), 1e-9)
        return math.log(v) if self.kind is ObjectiveKind.P95 else -math.log(v)

    def value_of_loss(self, loss: float) -> float:
        """Inverse of `loss`: the objective in natural units (seconds, or penalised req/s)."""
        return math.exp(loss) if self.kind is ObjectiveKind.P95 else math.exp(-loss)

    def within(self, loss: float, best_loss: float, tol: float = 0.05) -> bool:
        """Is `loss` within `tol` (relative, in natural units) of `best_loss`?

        p95: p95 <= (1 + tol) * best; throughput: score >= (1 - tol) * best."""
        gap = math.log1p(tol) if self.kind is ObjectiveKind.P95 else -math.log1p(-tol)
        return loss <= best_loss + gap + 1e-12


class Target(Protocol):
    def apply(self, knobs: dict[str, Any]) -> None: ...
    def send(self, icl: dict, sampling_params: dict) -> None: ...
    def close(self) -> None: ...


class EngineTarget:
    def __init__(self, engine) -> None:
        self.engine = engine

    def apply(self, knobs: dict[str, Any]) -> None:
        self.engine.update_config(**knobs)

    def send(self, icl: dict, sampling_params: dict) -> None:
        self.engine.generate(icl=icl, sampling_params=sampling_params)

    def close(self) -> None:
        pass


class ServerTarget:
    """A running server: knobs by POST /update_config, traffic by POST /generate; `api_key` (if the server
    has one) goes in every request as a Bearer token."""

    def __init__(self, url: str, timeout_s: float = 600.0, transport=None, api_key: str | None = None) -> None:
        import httpx

        self.url = url.rstrip("/")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        # transport: tests inject a mock
        self._client = httpx.Client(timeout=timeout_s, transport=transport, headers=headers)

    def apply(self, knobs: dict[str, Any]) -> None:
        r = self._client.post(f"{self.url}/update_config", json=knobs)
        if r.status_code != 200:
            raise RuntimeError(f"POST {self.url}/update_config -> {r.status_code}: {r.text[:200]}")

    def send(self, icl: dict, sampling_params: dict) -> None:
        r = self._client.post(f"{self.url}/generate", json={"icl": icl, "sampling_params": sampling_params})
        if r.status_code != 200:
            raise RuntimeError(f"POST {self.url}/generate -> {r.status_code}: {r.text[:200]}")

    def close(self) -> None:
        self._client.close()


# Both clocks are read at every event. Wall time is what a user sees; process CPU time (all threads of this
# process, torch's included) advances only while the engine computes, so on a shared machine it is the far
# steadier measure of what a config costs. Metrics carry both: p95_s / throughput_rps (wall) and
# p95_cpu_s / throughput_cpu_rps (CPU clock); the CPU clock is meaningful for EngineTarget only.
Stamp = tuple[float, float]  # (wall seconds, process CPU seconds)
_CPU_NAMES = {"p50_s": "p50_cpu_s", "p95_s": "p95_cpu_s", "mean_s": "mean_cpu_s",
              "throughput_rps": "throughput_cpu_rps"}


def _now() -> Stamp:
    return time.monotonic(), time.process_time()


@dataclass
class _Done:
    seq: int
    start: Stamp
    end: Stamp


class ClosedLoop:
    """C worker threads replaying `workload` against `target` until `stop()`; see the module docstring."""

    def __init__(self, target: Target, workload: Workload, concurrency: int) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency: must be >= 1 (got {concurrency})")
        self.target, self.workload, self.concurrency = target, workload, concurrency
        self._cond = threading.Condition()
        self._next_seq = 0
        self._inflight: dict[int, Stamp] = {}  # seq -> send time
        self._done: list[_Done] = []
        self._errors: list[BaseException] = []
        self._stopping = False
        self._threads = [threading.Thread(target=self._work, daemon=True, name=f"autotune-client-{i}")
                         for i in range(concurrency)]
        for t in self._threads:
            t.start()

    def _work(self) -> None:
        reqs = self.workload.requests
        while True:
            with self._cond:
                if self._stopping or self._errors:
                    return
                seq = self._next_seq
                self._next_seq += 1
                start = self._inflight[seq] = _now()
            req = reqs[seq % len(reqs)]
            try:
                self.target.send(req.icl, req.sampling_params)
            except BaseException as e:  # surfaced to the measuring thread, which raises it
                with self._cond:
                    self._errors.append(e)
                    self._cond.notify_all()
                return
            with self._cond:
                del self._inflight[seq]
                self._done.append(_Done(seq, start, _now()))
                self._cond.notify_all()

    def measure(self, knobs: dict[str, Any] | None, warmup: int, window: int, max_window_s: float = 120.0
                ) -> dict[str, float]:
        """Apply `knobs` (None: keep the current ones), then measure; returns the window's metrics (see module doc)."""
        if warmup < 0 or window < 2:
            raise ValueError(f"warmup must be >= 0 and window >= 2 (got {warmup}, {window})")
        with self._cond:
            # Sequence numbers below this were sent under the old knobs (or straddle the change).
            first_seq = self._next_seq
        if knobs is not None:
            self.target.apply(knobs)
        applied_at = _now()
        with self._cond:
            first_seq = max(first_seq, self._next_seq)
            measured_from = first_seq + warmup
            last_seq = measured_from + window
            deadline = None
            while True:
                if self._errors:
                    raise RuntimeError("a replayed request failed") from self._errors[0]
                done = [d for d in self._done if measured_from <= d.seq < last_seq]
                if len(done) >= window:
                    break
                if deadline is None and sum(first_seq <= d.seq < measured_from for d in self._done) >= warmup:
                    deadline = time.monotonic() + max_window_s
                if deadline is not None and time.monotonic() >= deadline:
                    break
                self._cond.wait(timeout=0.5)
            now = _now()
            censored = [s for q, s in self._inflight.items() if measured_from <= q < last_seq]
            later = [d for d in self._done if d.seq >= first_seq]
            self._done = [d for d in self._done if d.seq >= last_seq]  # older ones are never needed again
        metrics = {}
        for clock in (0, 1):
            # Throughput is the completion rate between the end of the warm-up and the window's end, counting
            # every request that completed in between (with C in flight, some belong to the next window).
            ends = sorted(d.end[clock] for d in later)
            t_from = ends[warmup - 1] if warmup > 0 and len(ends) >= warmup else applied_at[clock]
            t_to = now[clock] if censored else max((d.end[clock] for d in done), default=now[clock])
            m = window_metrics([d.end[clock] - d.start[clock] for d in done], [now[clock] - s[clock] for s in censored],
                               sum(t_from < e <= t_to for e in ends), t_to - t_from)
            if clock == 0:
                metrics.update(m)
            else:
                metrics.update({_CPU_NAMES[k]: v for k, v in m.items() if k in _CPU_NAMES})
        return metrics

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
        for t in self._threads:
            t.join()


def window_metrics(latencies: list[float], censored: list[float], completions: int, span_s: float
                   ) -> dict[str, float]:
    """p50/p95/mean latency over finished + censored requests; throughput = completions / span."""
    all_lat = np.array(latencies + censored, dtype=np.float64)  # [n]
    if all_lat.size == 0:
        raise RuntimeError("the window saw no request: raise max_window_s")
    return {
        "p50_s": float(np.percentile(all_lat, 50)),
        "p95_s": float(np.percentile(all_lat, 95)),
        "mean_s": float(all_lat.mean()),
        "throughput_rps": completions / span_s if span_s > 0 else 0.0,
        "finished": float(len(latencies)),
        "censored": float(len(censored)),
    }
