"""Which variants may be served now, and why not.

Two faults take a variant out of the controller's choice. Its file no longer matches the
manifest (found by the reload's integrity check): it is *out of service*, nothing more is
served from it, until a later reload finds the file restored. Its onnxruntime runs keep
failing (`threshold` failures among its last `window` runs): it is *unhealthy* for a
cooldown; the controller moves off it, a client that names it explicitly is still served.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import structlog
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

#: Failed runs, among a variant's last `FAILURE_WINDOW` runs, that make it unhealthy.
FAILURE_THRESHOLD = 3
FAILURE_WINDOW = 10
#: How long an unhealthy variant is left out before the controller may choose it again.
COOLDOWN_S = 30.0

OUT_OF_SERVICE = "out_of_service"
UNHEALTHY = "unhealthy"


@dataclass(frozen=True)
class Unavailable:
    """Why a variant is not chosen: its state, the reason, and (unhealthy) when the cooldown ends."""

    state: str
    reason: str
    until: float | None = None  # monotonic; None: until a reload finds the file restored

    def as_dict(self, now: float) -> dict[str, object]:
        left = None if self.until is None else round(max(0.0, self.until - now), 1)
        return {"state": self.state, "reason": self.reason, "cooldown_left_s": left}


class VariantHealth:
    """Out-of-service and unhealthy variants; `record` is called by every worker, so it is cheap
    and locked. Time is an argument (monotonic seconds), so tests drive it without a clock."""

    def __init__(
        self, threshold: int = FAILURE_THRESHOLD, window: int = FAILURE_WINDOW, cooldown_s: float = COOLDOWN_S
    ) -> None:
        self.threshold = threshold
        self.window = window
        self.cooldown_s = cooldown_s
        self._lock = threading.Lock()
        self._retired: dict[str, str] = {}
        self._unhealthy: dict[str, Unavailable] = {}
        self._runs: dict[str, deque[bool]] = {}
        self._failures: dict[str, int] = {}

    def record(self, variant: str, ok: bool, now: float, error: str = "") -> None:
        """One finished run. A failure that reaches the threshold starts the cooldown."""
        with self._lock:
            if not ok:
                self._failures[variant] = self._failures.get(variant, 0) + 1
            self._expire(now)
            if variant in self._unhealthy:
                return  # left out already; outcomes during the cooldown do not extend it
            runs = self._runs.setdefault(variant, deque(maxlen=self.window))
            runs.append(ok)
            failed = 0 if ok else runs.count(False)
            if failed < self.threshold:
                return
            runs.clear()  # after the cooldown the variant starts with a clean record
            reason = f"{failed} of its last {self.window} runs failed, the last with: {error}"
            self._unhealthy[variant] = Unavailable(UNHEALTHY, reason, now + self.cooldown_s)
        log.warning("variant_unhealthy", variant=variant, reason=reason, cooldown_s=self.cooldown_s)

    def retire(self, variant: str, reason: str) -> None:
        """Take `variant` out of service (logged when it goes out or the reason changes)."""
        with self._lock:
            known = self._retired.get(variant)
            self._retired[variant] = reason
        if known != reason:
            log.error("variant_out_of_service", variant=variant, reason=reason)

    def restore(self, variant: str) -> None:
        """Put `variant` back in service: its file matches the manifest again."""
        with self._lock:
            reason = self._retired.pop(variant, None)
        if reason is not None:
            log.info("variant_back_in_service", variant=variant, was=reason)

    def out_of_service(self, variant: str) -> str | None:
        """Why nothing may be served from `variant`, or None."""
        return self._retired.get(variant)

    def retired(self) -> dict[str, str]:
        """Every variant out of service, and why."""
        with self._lock:
            return dict(self._retired)

    def unavailable(self, now: float) -> dict[str, Unavailable]:
        """Every variant the controller must not choose now; out of service wins over unhealthy."""
        with self._lock:
            self._expire(now)
            found = dict(self._unhealthy)
            found.update({name: Unavailable(OUT_OF_SERVICE, reason) for name, reason in self._retired.items()})
        return found

    def failures(self) -> dict[str, int]:
        """Failed runs per variant since start."""
        with self._lock:
            return dict(self._failures)

    def _expire(self, now: float) -> None:
        for name, entry in list(self._unhealthy.items()):
            if entry.until is not None and entry.until <= now:
                del self._unhealthy[name]
                log.info("variant_cooldown_over", variant=name, was=entry.reason)


class HealthCollector(Collector):
    """Prometheus view of `VariantHealth`, read at scrape time so it never drifts from the truth."""

    def __init__(self, health: VariantHealth, variants: Iterable[str]) -> None:
        self.health = health
        self.variants = list(variants)

    def collect(self) -> Iterator[Metric]:
        unavailable = self.health.unavailable(time.monotonic())
        failures = self.health.failures()
        failed = CounterMetricFamily(
            "edge_agent_inference_failures", "onnxruntime runs that raised, by variant", labels=["variant"]
        )
        state = GaugeMetricFamily(
            "edge_agent_variant_unavailable",
            "1 while a variant is out of service (file changed) or unhealthy (failing runs)",
            labels=["variant", "state"],
        )
        for name in self.variants:
            failed.add_metric([name], failures.get(name, 0))
            entry = unavailable.get(name)
            for kind in (OUT_OF_SERVICE, UNHEALTHY):
                state.add_metric([name, kind], 1.0 if entry is not None and entry.state == kind else 0.0)
        yield failed
        yield state
