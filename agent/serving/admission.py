"""Admission: whether a request can be served now, decided once per request.

A request is admitted (or refused with 503 and Retry-After) when its body is in and before
anything is decoded: `Admission.admit` is the one check of capacity and deadline, and the
ticket it returns holds a queue place until the request's work ends. The plan uses what each
worker is expected to finish when (`ServiceEstimate` per configuration); the latency window
records every answer and refusal for status and the controller.
"""

from __future__ import annotations

import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from agent.errors import Overloaded
from agent.values import Config

ESTIMATE_PROBE_S = 0.5  # how often a deadline request may run although the estimate says it is late
SERVICE_SAMPLES = 32  # compute times kept per configuration
SERVICE_QUANTILE = 0.9  # of those, the one admission plans with


@dataclass(frozen=True)
class Clock:
    """The runner's clocks, injectable for tests: `wall` stamps switches and pins, `monotonic`
    times requests and ages estimates and the latency window."""

    wall: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic


@dataclass
class LatencyWindow:
    """Recent requests: (time, latency ms or inf for a refused one, configuration), kept for
    `span_s`; percentiles per configuration feed the controller, attainment feeds status."""

    span_s: float
    _items: deque[tuple[float, float, Config | None]] = field(default_factory=deque)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, now: float, latency_ms: float, config: Config | None = None) -> None:
        with self._lock:
            self._items.append((now, latency_ms, config))
            while self._items and self._items[0][0] < now - self.span_s:
                self._items.popleft()

    def values(self, now: float, span_s: float | None = None, config: Config | None = None) -> NDArray[np.float64]:
        since = now - (span_s or self.span_s)
        with self._lock:
            items = list(self._items)
        return np.array([v for t, v, c in items if t >= since and (config is None or c == config)], dtype=np.float64)

    def percentile(
        self, now: float, q: float, span_s: float | None = None, config: Config | None = None
    ) -> tuple[float | None, int]:
        """The q-th percentile of answered requests (refused ones count as infinitely slow)."""
        values = self.values(now, span_s, config)
        if not len(values):
            return None, 0
        return float(np.percentile(values, q)), len(values)

    def by_config(self, now: float, q: float, span_s: float | None = None) -> dict[Config, tuple[float, int]]:
        """The q-th percentile and count of each configuration's requests in the window, in one
        pass (the controller asks every tick; under overload the window holds thousands)."""
        since = now - (span_s or self.span_s)
        with self._lock:
            items = list(self._items)
        groups: dict[Config, list[float]] = {}
        for t, v, c in items:
            if t >= since and c is not None:
                groups.setdefault(c, []).append(v)
        return {c: (float(np.percentile(vs, q)), len(vs)) for c, vs in groups.items()}

    def attainment(self, now: float, slo_ms: float, span_s: float | None = None) -> float | None:
        values = self.values(now, span_s)
        return float((values <= slo_ms).mean()) if len(values) else None

    def stats(self, now: float, span_s: float | None = None) -> dict[str, float | int | None]:
        values = self.values(now, span_s)
        values = values[np.isfinite(values)]
        if not len(values):
            return {"count": 0, "p50_ms": None, "p95_ms": None, "p99_ms": None}
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return {"count": len(values), "p50_ms": round(p50, 3), "p95_ms": round(p95, 3), "p99_ms": round(p99, 3)}


@dataclass
class ServiceEstimate:
    """How long one configuration computes, from its recent requests. Admission plans with a
    high quantile (`ms`) rather than the mean: under contention compute times spread, and a
    request admitted on the mean near its deadline ends late about half the time. A request
    that already waited is refused at its start only when it would more likely than not end
    late (`typical`, the median): refusing it costs its client the whole wait for nothing.
    Samples older than ESTIMATE_PROBE_S are dropped at the next one: they describe another load."""

    ms: float = 10.0
    typical: float = 10.0
    at: float = 0.0  # monotonic time of the last sample
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=SERVICE_SAMPLES))

    def add(self, ms: float, now: float) -> None:
        if now - self.at > ESTIMATE_PROBE_S:
            self.samples.clear()
        self.samples.append(ms)
        self.at = now
        ordered = sorted(self.samples)
        self.ms = ordered[min(len(ordered) - 1, int(SERVICE_QUANTILE * len(ordered)))]
        self.typical = ordered[len(ordered) // 2]


@dataclass
class Ticket:
    """An admitted request's place in the queue, held until `Admission.release`."""

    fixed: Config | None  # a configuration the request asked for; None: the one in force at its start
    enqueued: float  # monotonic
    deadline_at: float | None  # monotonic; None: no deadline, or admitted as a probe
    released: bool = False


class Admission:
    """Places in the queue (`workers` running + the waiting room) and what each worker is
    expected to finish when. Thread-safe: the loop admits, the workers start and finish."""

    def __init__(self, workers: int, capacity: int, window: LatencyWindow, clock: Clock) -> None:
        self.workers = workers
        self.capacity = capacity
        self.window = window
        self.clock = clock
        self.service: dict[Config, ServiceEstimate] = {}
        self._lock = threading.Lock()
        self._inflight = 0
        self._finish_at: dict[int, float] = {}  # worker thread -> expected end of its request (monotonic)

    @property
    def inflight(self) -> int:
        return self._inflight

    def expected_service_ms(self, config: Config) -> float:
        if config in self.service:
            return self.service[config].ms
        return max((e.ms for e in self.service.values()), default=10.0)

    def typical_service_ms(self, config: Config) -> float:
        estimate = self.service.get(config)
        return estimate.typical if estimate is not None else self.expected_service_ms(config)

    def admit(self, config: Config, deadline_ms: float | None, fixed: Config | None) -> Ticket:
        """Take a place for a request on `config`, or refuse it (Overloaded, with Retry-After)
        when the queue is full or its deadline cannot be met."""
        with self._lock:
            inflight = self._inflight
            service = self.expected_service_ms(config)
            ahead = inflight - len(self._finish_at)  # admitted, not started yet
            predicted = self._predicted_wait_ms(ahead, service) + service
            now = self.clock.monotonic()
            if inflight >= self.capacity:
                self.window.add(now, math.inf, config)
                raise Overloaded(
                    f"queue full ({inflight} requests admitted)", retry_after_s=max(0.001, predicted / 1000)
                )
            # Only requests that run update the estimate: if it alone refuses every request with
            # this deadline (nothing ahead), one runs now and then as a probe, or an estimate from
            # a busy moment would refuse such requests forever.
            estimate = self.service.get(config)
            stale = now - (estimate.at if estimate is not None else 0.0) > ESTIMATE_PROBE_S
            probe = deadline_ms is not None and inflight < self.workers and stale
            if deadline_ms is not None and predicted > deadline_ms and not probe:
                self.window.add(now, math.inf, config)
                raise Overloaded(
                    f"deadline {deadline_ms:g} ms cannot be met: predicted {predicted:.1f} ms "
                    f"({ahead} requests ahead of it)",
                    retry_after_s=predicted / 1000,
                )
            self._inflight += 1
        deadline_at = now + deadline_ms / 1000 if deadline_ms is not None and not probe else None
        return Ticket(fixed, now, deadline_at)

    def release(self, ticket: Ticket) -> None:
        """Give the ticket's place back (once; later calls do nothing)."""
        with self._lock:
            if not ticket.released:
                ticket.released = True
                self._inflight -= 1

    def _predicted_wait_ms(self, queued: int, service_ms: float) -> float:
        """When a worker would start a request admitted now: each worker is free when its
        running request's expected end has passed, and the `queued` requests ahead take the
        earliest free worker in turn (call with the lock held). Counting a whole service time
        per busy worker instead refuses, at half load, a fifth of requests that would be in time."""
        now = self.clock.monotonic()
        free = [max(0.0, (end - now) * 1000) for end in self._finish_at.values()]
        free += [0.0] * max(0, self.workers - len(free))
        heapq.heapify(free)
        for _ in range(max(0, queued)):
            heapq.heapreplace(free, free[0] + service_ms)
        return free[0]

    def started(self, worker: int, config: Config, at: float) -> None:
        """A worker started a request on `config` at `at` (monotonic)."""
        with self._lock:
            self._finish_at[worker] = at + self.expected_service_ms(config) / 1000

    def finished(self, worker: int, config: Config | None = None, compute_ms: float | None = None) -> None:
        """A worker's request ended; a completed run's compute time updates its estimate."""
        with self._lock:  # two workers may finish the same configuration at once
            self._finish_at.pop(worker, None)
            if config is not None and compute_ms is not None:
                self.service.setdefault(config, ServiceEstimate()).add(compute_ms, self.clock.monotonic())
