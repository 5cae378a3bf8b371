"""Admission, the worker pool and the configuration in force.

The request path reads top to bottom in `Runner.submit`: admit (bounded, deadline-aware) ->
queue -> worker (capture the configuration at start, prepare input, run) -> outcome.
`Runner.switch` is the one way the configuration changes; a request keeps the configuration
it started with, so a switch never fails or mixes a request.
"""

from __future__ import annotations

import asyncio
import heapq
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import structlog
from numpy.typing import NDArray

from agent.errors import BadInput, InferenceFailed, NotFound, Overloaded, VariantUnavailable
from agent.serving.health import VariantHealth
from agent.serving.priority import as_worker
from agent.zoo.sessions import LoadedVariant, Prediction, Zoo

log = structlog.get_logger(__name__)

ESTIMATE_PROBE_S = 0.5  # how often a deadline request may run although the estimate says it is late
SERVICE_SAMPLES = 32  # compute times kept per configuration
SERVICE_QUANTILE = 0.9  # of those, the one admission plans with


@dataclass(frozen=True, order=True)
class Config:
    """A configuration the daemon can serve: a variant and its token budget."""

    variant: str
    budget: float

    def __str__(self) -> str:
        return f"{self.variant}@{self.budget:g}"

    @classmethod
    def parse(cls, text: str) -> Config:
        """`int8@0.5`, or `int8` for budget 1.0."""
        name, _, budget = text.partition("@")
        try:
            value = float(budget) if budget else 1.0
        except ValueError:
            raise BadInput(f"invalid configuration {text!r}: budget must be a number, as in int8@0.5") from None
        if not name or not 0 < value <= 1:
            raise BadInput(f"invalid configuration {text!r}: expected VARIANT@BUDGET with 0 < BUDGET <= 1")
        return cls(name, value)


@dataclass(frozen=True)
class Switch:
    at: float  # wall clock
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class Outcome:
    config: Config
    prediction: Prediction
    queue_ms: float
    compute_ms: float


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


@dataclass(frozen=True)
class Pin:
    config: Config
    until: float  # wall clock
    reason: str


Prepare = Callable[[LoadedVariant], NDArray[np.float32]]


class Runner:
    """Runs requests on the configuration in force, in a bounded pool of ORT workers."""

    def __init__(self, zoo: Zoo, initial: Config, workers: int, queue_size: int, window_s: float = 30.0) -> None:
        self.zoo = zoo
        self.health = VariantHealth()
        self.workers = workers
        self.capacity = workers + queue_size
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ort-worker", initializer=as_worker)
        self._lock = threading.Lock()
        self._inflight = 0
        self._finish_at: dict[int, float] = {}  # worker thread -> expected end of its request (perf_counter)
        self._current = self.check(initial)
        self._since = time.time()
        self._reason = "initial configuration"
        self._pin: Pin | None = None
        self.history: deque[Switch] = deque(maxlen=20)
        self.window = LatencyWindow(window_s)
        self.service: dict[Config, ServiceEstimate] = {}
        self.on_switch: list[Callable[[Switch], None]] = []
        #: Called with the new pin (None: removed) whenever it changes, so it can be persisted.
        self.on_pin: list[Callable[[Pin | None], None]] = []

    # -- configuration -------------------------------------------------------------------

    @property
    def current(self) -> Config:
        return self._current

    @property
    def since(self) -> float:
        return self._since

    @property
    def reason(self) -> str:
        return self._reason

    @property
    def pin_state(self) -> Pin | None:
        return self._pin

    def check(self, config: Config) -> Config:
        variant = self.zoo.variants.get(config.variant)
        if variant is None:
            raise NotFound(f"variant {config.variant!r} is not loaded (loaded: {', '.join(sorted(self.zoo.variants))})")
        if config.budget not in variant.spec.budgets:
            allowed = ", ".join(f"{b:g}" for b in variant.spec.budgets)
            raise BadInput(f"budget {config.budget:g} is not offered by {config.variant} (offered: {allowed})")
        self._refuse_out_of_service(config.variant)
        return config

    def _refuse_out_of_service(self, variant: str) -> None:
        reason = self.health.out_of_service(variant)
        if reason is not None:
            raise VariantUnavailable(f"variant {variant} is out of service: {reason}")

    def retire(self, variant: str, reason: str) -> None:
        """Serve nothing more from `variant` (its file no longer matches the manifest); a pin on
        it is lifted, since it cannot be honoured. Moving the configuration off it is the caller's."""
        self.health.retire(variant, reason)
        pin = self._pin
        if pin is not None and pin.config.variant == variant:
            self.unpin(f"pinned variant {variant} is out of service")

    def restore(self, variant: str) -> None:
        """Serve `variant` again: a reload found its file matching the manifest once more."""
        self.health.restore(variant)

    def switch(self, config: Config, reason: str, *, force: bool = False) -> bool:
        """Make `config` the configuration in force. Ignored (False) while pinned unless forced."""
        self.check(config)
        with self._lock:
            if self._pin is not None and not force:
                return False
            old = self._current
            if config == old:
                self._reason = reason
                return False
            self._current = config  # one reference assignment: workers see old or new, never half
            self._since = time.time()
            self._reason = reason
            record = Switch(self._since, str(old), str(config), reason)
            self.history.append(record)
        log.info("config_switched", old=str(old), new=str(config), reason=reason)
        for callback in self.on_switch:
            callback(record)
        return True

    def pin(self, config: Config, seconds: float, reason: str) -> Pin:
        """Hold `config` for maintenance until the pin expires or is removed."""
        self.check(config)
        pin = Pin(config, time.time() + seconds, reason)
        with self._lock:
            self._pin = pin  # before the switch, so its callbacks already see the pin
        self.switch(config, f"pinned: {reason}", force=True)
        self._pinned(pin)
        return pin

    def unpin(self, reason: str = "unpinned") -> bool:
        with self._lock:
            had, self._pin = self._pin is not None, None
            if had:
                self._reason = reason
        if had:
            log.info("pin_removed", reason=reason)
            self._pinned(None)
        return had

    def _pinned(self, pin: Pin | None) -> None:
        for callback in self.on_pin:
            callback(pin)

    def expire_pin(self, now: float) -> None:
        pin = self._pin
        if pin is not None and now >= pin.until:
            self.unpin("pin expired")

    def restore_pin(self, pin: Pin) -> None:
        """Re-apply a pin saved before a restart, if its variant is still loaded."""
        try:
            self.pin(pin.config, pin.until - time.time(), pin.reason)
        except (NotFound, BadInput) as exc:
            log.warning("pin_not_restored", config=str(pin.config), error=exc.message)

    # -- admission and work --------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return self._inflight

    def expected_service_ms(self, config: Config) -> float:
        if config in self.service:
            return self.service[config].ms
        return max((e.ms for e in self.service.values()), default=10.0)

    def _estimated_at(self, config: Config) -> float:
        estimate = self.service.get(config)
        return estimate.at if estimate is not None else 0.0

    def _release(self, _: Future[Outcome]) -> None:
        with self._lock:
            self._inflight -= 1

    def _admit(self, config: Config, deadline_ms: float | None) -> bool:
        """Raise Overloaded if a request for `config` cannot be served now (call with the lock
        held); True if it is admitted as a probe of a stale estimate."""
        inflight = self._inflight
        service = self.expected_service_ms(config)
        ahead = inflight - len(self._finish_at)  # admitted, not started yet
        predicted = self._predicted_wait_ms(ahead, service) + service
        if inflight >= self.capacity:
            self.window.add(time.monotonic(), math.inf, config)
            raise Overloaded(f"queue full ({inflight} requests admitted)", retry_after_s=max(0.001, predicted / 1000))
        # Only requests that run update the estimate: if it alone refuses every request with
        # this deadline (nothing ahead), one runs now and then as a probe, or an estimate from
        # a busy moment would refuse such requests forever.
        probe = (
            deadline_ms is not None
            and inflight < self.workers
            and time.monotonic() - self._estimated_at(config) > ESTIMATE_PROBE_S
        )
        if deadline_ms is not None and predicted > deadline_ms and not probe:
            self.window.add(time.monotonic(), math.inf, config)
            raise Overloaded(
                f"deadline {deadline_ms:g} ms cannot be met: predicted {predicted:.1f} ms "
                f"({ahead} requests ahead of it)",
                retry_after_s=predicted / 1000,
            )
        return probe

    def _predicted_wait_ms(self, queued: int, service_ms: float) -> float:
        """When a worker would start a request admitted now: each worker is free when its
        running request's expected end has passed, and the `queued` requests ahead take the
        earliest free worker in turn (call with the lock held). Counting a whole service time
        per busy worker instead refuses, at half load, a fifth of requests that would be in time."""
        now = time.perf_counter()
        free = [max(0.0, (end - now) * 1000) for end in self._finish_at.values()]
        free += [0.0] * max(0, self.workers - len(free))
        heapq.heapify(free)
        for _ in range(max(0, queued)):
            heapq.heapreplace(free, free[0] + service_ms)
        return free[0]

    def check_admission(self, deadline_ms: float | None = None, fixed: Config | None = None) -> None:
        """Refuse (Overloaded) before the request body is even read, when it would be refused
        anyway: under overload a refusal then costs a few microseconds, not a body's decode."""
        with self._lock:
            self._admit(fixed or self._current, deadline_ms)

    async def submit(self, prepare: Prepare, deadline_ms: float | None = None, fixed: Config | None = None) -> Outcome:
        """Admit, queue and run one request; refuse at once (503) what cannot be served in time."""
        config = fixed or self._current
        with self._lock:
            probe = self._admit(config, deadline_ms)
            self._inflight += 1
        enqueued = time.perf_counter()
        deadline_at = enqueued + deadline_ms / 1000 if deadline_ms is not None and not probe else None
        try:
            future = self._executor.submit(self._work, prepare, enqueued, deadline_at, fixed)
        except RuntimeError:  # executor shut down while draining
            with self._lock:
                self._inflight -= 1
            raise Overloaded("shutting down", retry_after_s=1.0) from None
        future.add_done_callback(self._release)  # also fires when cancelled before it started
        return await asyncio.wrap_future(future)

    def _work(self, prepare: Prepare, enqueued: float, deadline_at: float | None, fixed: Config | None) -> Outcome:
        started = time.perf_counter()
        config = fixed or self._current  # captured once: this request runs on it to the end
        self._refuse_out_of_service(config.variant)
        variant = self.zoo.variants[config.variant]
        service_s = self.expected_service_ms(config) / 1000
        typical_s = self.service[config].typical / 1000 if config in self.service else service_s
        if deadline_at is not None and started + typical_s > deadline_at:
            self.window.add(time.monotonic(), math.inf, config)
            raise Overloaded("deadline passed while queued", retry_after_s=service_s)
        worker = threading.get_ident()
        with self._lock:
            self._finish_at[worker] = started + service_s
        try:
            x = prepare(variant)
            prediction = variant.run(x, config.budget)
        except InferenceFailed as exc:
            log.warning("inference_failed", variant=config.variant, error=exc.message)
            self.health.record(config.variant, False, time.monotonic(), exc.message)
            raise
        finally:
            with self._lock:
                del self._finish_at[worker]
        self.health.record(config.variant, True, time.monotonic())
        done = time.perf_counter()
        compute_ms = (done - started) * 1000
        queue_ms = (started - enqueued) * 1000
        with self._lock:  # two workers may finish the same configuration at once
            self.service.setdefault(config, ServiceEstimate()).add(compute_ms, time.monotonic())
        self.window.add(time.monotonic(), queue_ms + compute_ms, config)
        return Outcome(config, prediction, queue_ms, compute_ms)

    def warm_up(self, runs: int) -> None:
        """Run every variant at every budget so first requests do not pay for lazy init."""
        for variant in self.zoo.variants.values():
            x = np.random.default_rng(0).random(
                (1, 3, variant.spec.resolution, variant.spec.resolution), dtype=np.float32
            )
            for budget in variant.spec.budgets:
                times = []
                for _ in range(max(1, runs)):
                    start = time.perf_counter()
                    variant.run(x, budget)
                    times.append((time.perf_counter() - start) * 1000)
                median = float(np.median(times))
                self.service[Config(variant.name, budget)] = ServiceEstimate(median, median)

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
