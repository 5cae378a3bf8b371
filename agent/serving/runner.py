"""The worker pool and the configuration in force.

The request path reads top to bottom: `admit` (the one admission, `agent.serving.admission`)
-> `run` (queue, worker: capture the configuration at start, refuse an out-of-service variant,
prepare input, run) -> outcome. `Runner.switch` is the one way the configuration changes; a
request keeps the configuration it started with, so a switch never fails or mixes a request.
"""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import structlog
from numpy.typing import NDArray

from agent.errors import BadInput, InferenceFailed, NotFound, Overloaded, VariantUnavailable
from agent.serving.admission import Admission, Clock, LatencyWindow, ServiceEstimate, Ticket
from agent.serving.health import VariantHealth
from agent.serving.priority import as_worker
from agent.values import Config, Pin, Switch
from agent.zoo.sessions import LoadedVariant, Prediction, Zoo

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Outcome:
    config: Config
    prediction: Prediction
    queue_ms: float
    compute_ms: float  # the model's run
    decode_ms: float = 0.0  # the body to the model's input: decode, crop, resize


Prepare = Callable[[LoadedVariant], NDArray[np.float32]]


class Runner:
    """Runs requests on the configuration in force, in a bounded pool of ORT workers."""

    def __init__(
        self,
        zoo: Zoo,
        initial: Config,
        workers: int,
        queue_size: int,
        window_s: float = 30.0,
        clock: Clock | None = None,
    ) -> None:
        self.zoo = zoo
        self.clock = clock or Clock()
        self.health = VariantHealth()
        self.workers = workers
        self.capacity = workers + queue_size
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix="ort-worker", initializer=as_worker)
        self._lock = threading.Lock()
        self._current = self.check(initial)
        self._since = self.clock.wall()
        self._reason = "initial configuration"
        self._pin: Pin | None = None
        self._pin_deadline = 0.0  # monotonic: the pin's `until` is for display and pin.json only
        self.history: deque[Switch] = deque(maxlen=20)
        self.window = LatencyWindow(window_s)
        #: Decode + resize time of recent requests: a cost outside the model that every
        #: configuration pays, added to its predicted latency (the controller's decode_ms).
        self.decode_window = LatencyWindow(window_s)
        self.model_window = LatencyWindow(window_s)  # the model's run alone: the controller's slowdown
        self.admission = Admission(workers, self.capacity, self.window, self.clock)
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
        """`config` if it can be put in force: loaded, a budget it offers, in service."""
        self.validate(config)
        self._refuse_out_of_service(config.variant)
        return config

    def validate(self, config: Config) -> Config:
        """`config` if a request may ask for it: a loaded variant and a budget it offers.
        Whether it is in service is checked once, when the request starts (`_work`)."""
        variant = self.zoo.variants.get(config.variant)
        if variant is None:
            raise NotFound(f"variant {config.variant!r} is not loaded (loaded: {', '.join(sorted(self.zoo.variants))})")
        if config.budget not in variant.spec.budgets:
            allowed = ", ".join(f"{b:g}" for b in variant.spec.budgets)
            raise BadInput(f"budget {config.budget:g} is not offered by {config.variant} (offered: {allowed})")
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
            self._since = self.clock.wall()
            self._reason = reason
            record = Switch(self._since, str(old), str(config), reason)
            self.history.append(record)
        log.info("config_switched", old=str(old), new=str(config), reason=reason)
        for callback in self.on_switch:
            callback(record)
        return True

    def pin(self, config: Config, seconds: float, reason: str) -> Pin:
        """Hold `config` for maintenance for `seconds` (on the monotonic clock, so a step of the
        wall clock neither shortens nor stretches it) or until it is removed."""
        self.check(config)
        pin = Pin(config, self.clock.wall() + seconds, reason)
        with self._lock:
            self._pin = pin  # before the switch, so its callbacks already see the pin
            self._pin_deadline = self.clock.monotonic() + seconds
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

    def pin_left_s(self) -> float | None:
        """Seconds the pin has left (monotonic), or None when there is none."""
        return None if self._pin is None else max(0.0, self._pin_deadline - self.clock.monotonic())

    def expire_pin(self) -> None:
        left = self.pin_left_s()
        if left is not None and left <= 0:
            self.unpin("pin expired")

    def restate_pin(self) -> Pin | None:
        """After a step of the wall clock: the pin's `until` said again on the new wall clock, its
        time left unchanged, and handed to the `on_pin` callbacks (pin.json then holds it, so a
        restart later keeps the same expiry)."""
        with self._lock:
            pin = self._pin
            if pin is None:
                return None
            left = max(0.0, self._pin_deadline - self.clock.monotonic())
            self._pin = pin = Pin(pin.config, self.clock.wall() + left, pin.reason)
        self._pinned(pin)
        return pin

    def restore_pin(self, pin: Pin) -> bool:
        """Re-apply a pin saved before a restart, if its variant is still loaded; whether it was."""
        try:
            self.pin(pin.config, pin.until - self.clock.wall(), pin.reason)
        except (NotFound, BadInput) as exc:
            log.warning("pin_not_restored", config=str(pin.config), error=exc.message)
            return False
        return True

    # -- admission and work --------------------------------------------------------------

    @property
    def inflight(self) -> int:
        return self.admission.inflight

    @property
    def service(self) -> dict[Config, ServiceEstimate]:
        """Compute-time estimates per configuration (admission plans with them)."""
        return self.admission.service

    def expected_service_ms(self, config: Config) -> float:
        return self.admission.expected_service_ms(config)

    def admit(self, deadline_ms: float | None = None, fixed: Config | None = None) -> Ticket:
        """The one admission of a request (Overloaded, 503, if it cannot be served in time).
        Called once its body is in and before it is decoded: a refusal costs no decode, and a
        body that stalls holds no place. The ticket goes to `run`, or back through `release`."""
        return self.admission.admit(fixed or self._current, deadline_ms, fixed)

    def release(self, ticket: Ticket) -> None:
        """Give back the place of an admitted request that will not run (e.g. its body did not decode)."""
        self.admission.release(ticket)

    async def run(self, ticket: Ticket, prepare: Prepare) -> Outcome:
        """Queue and run an admitted request; its place is given back when it ends."""
        try:
            future = self._executor.submit(self._work, prepare, ticket)
        except RuntimeError:  # executor shut down while draining
            self.admission.release(ticket)
            raise Overloaded("shutting down", retry_after_s=1.0) from None
        future.add_done_callback(lambda _: self.admission.release(ticket))  # also when cancelled unstarted
        return await asyncio.wrap_future(future)

    async def submit(self, prepare: Prepare, deadline_ms: float | None = None, fixed: Config | None = None) -> Outcome:
        """Admit and run one request (for callers whose input is ready)."""
        return await self.run(self.admit(deadline_ms, fixed), prepare)

    def _work(self, prepare: Prepare, ticket: Ticket) -> Outcome:
        clock, admission = self.clock, self.admission
        started = clock.monotonic()
        config = ticket.fixed or self._current  # captured once: this request runs on it to the end
        self._refuse_out_of_service(config.variant)
        variant = self.zoo.variants[config.variant]
        if (
            ticket.deadline_at is not None
            and started + admission.typical_service_ms(config) / 1000 > ticket.deadline_at
        ):
            self.window.add(started, float("inf"), config)
            raise Overloaded("deadline passed while queued", retry_after_s=admission.expected_service_ms(config) / 1000)
        worker = threading.get_ident()
        admission.started(worker, config, started)
        try:
            x = prepare(variant)
            decoded = clock.monotonic()
            prediction = variant.run(x, config.budget)
        except InferenceFailed as exc:
            admission.finished(worker)
            log.warning("inference_failed", variant=config.variant, error=exc.message)
            self.health.record(config.variant, False, clock.monotonic(), exc.message)
            raise
        except BaseException:
            admission.finished(worker)
            raise
        done = clock.monotonic()
        decode_ms, compute_ms = (decoded - started) * 1000, (done - decoded) * 1000
        queue_ms = (started - ticket.enqueued) * 1000
        # Admission, the SLO window and the controller reason per image (the profile times one),
        # so a batch (v2) counts as its per-image share: whole, it would read as a slowdown.
        images = len(x)
        admission.finished(worker, config, (decode_ms + compute_ms) / images)
        self.health.record(config.variant, True, done)
        self.window.add(done, queue_ms + (decode_ms + compute_ms) / images, config)
        self.decode_window.add(done, decode_ms / images, config)
        self.model_window.add(done, compute_ms / images, config)
        return Outcome(config, prediction, queue_ms, compute_ms, decode_ms)

    def warm_up(self, runs: int) -> None:
        """Run every variant at every budget so first requests do not pay for lazy init."""
        for variant in self.zoo.variants.values():
            x = np.random.default_rng(0).random(
                (1, 3, variant.spec.resolution, variant.spec.resolution), dtype=np.float32
            )
            for budget in variant.spec.budgets:
                times = []
                for _ in range(max(1, runs)):
                    start = self.clock.monotonic()
                    variant.run(x, budget)
                    times.append((self.clock.monotonic() - start) * 1000)
                median = float(np.median(times))
                self.service[Config(variant.name, budget)] = ServiceEstimate(median, median)

    def close(self, wait: bool = True) -> None:
        self._executor.shutdown(wait=wait, cancel_futures=not wait)
