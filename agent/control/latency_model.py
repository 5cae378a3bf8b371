"""How long each configuration takes now: profiled x slowdown + overhead, tracked online.

Contention does two things to a request's latency. It stretches the model's compute (the
cores run other work too: every configuration slows by the same factor, `slowdown`), and it
adds time that does not scale with the model: the request's queueing behind other requests,
scheduling delay, the daemon's own per-request work (`overhead_ms`). A model of the ratio
alone (predicted = profiled x slowdown, as ALERT's global slowdown) learns that ratio on the
configuration in force; a fixed overhead then inflates the ratio of a small model and makes
every larger one look slower than it will be, so stepping up from a small model is too
conservative, and stepping down from a large one too optimistic.

The two unknowns are tracked by a Kalman filter over x = (slowdown, overhead_ms) with a
random-walk process (both drift when the load changes) and one measurement per configuration
seen in the latency window: y = its observed percentile - decode time, h = (its profiled
percentile, 1), and one of its model run alone, h = (profiled, 0). The model's own time pins
the slowdown, the whole request's the overhead; observations of configurations with different
profiled times tell the two apart as well.
Pure: no clock, no I/O. The caller passes the time, on any clock.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

SLOWDOWN_RANGE = (0.25, 50.0)
OVERHEAD_RANGE_MS = (0.0, 10_000.0)
#: Prior spread: the device runs about as profiled, give or take 50%, with a few ms outside the model.
PRIOR_VAR_SLOWDOWN = 0.5**2
PRIOR_VAR_OVERHEAD = 3.0**2
#: Random-walk drift per second, for slow changes; a load step (the slowdown doubling within a
#: second) is caught by the innovation gate below, so these can stay small and the estimate calm.
DRIFT_SLOWDOWN = 0.1**2
DRIFT_OVERHEAD = 0.5**2
#: The covariance stops growing at this many times the prior (an idle night is not infinitely uncertain).
MAX_VAR_FACTOR = 16.0
#: Relative noise of one observed percentile: a floor, plus a term that shrinks with the requests
#: it is over (a tail percentile of a handful of requests is rough).
REL_NOISE = 0.10
REL_NOISE_PER_SAMPLE = 0.25
#: An innovation beyond this many standard deviations is a change of load, not noise: the
#: covariance is inflated so that the estimate moves to it at once (fading memory).
GATE_SIGMAS = 3.0


@dataclass(frozen=True)
class Observation:
    """One configuration's recent latency: profiled and observed percentile, and how many
    requests the observed one is over. `whole`: the request's time in the daemon less decoding
    (slowdown and overhead); not whole: the model's run alone (slowdown only), which the daemon
    times apart, so that even one configuration in force tells the two unknowns apart."""

    profiled_ms: float
    observed_ms: float
    count: int
    whole: bool = True


@dataclass(frozen=True)
class LatencyModel:
    slowdown: float = 1.0
    overhead_ms: float = 0.0
    var_s: float = PRIOR_VAR_SLOWDOWN
    cov_so: float = 0.0
    var_o: float = PRIOR_VAR_OVERHEAD
    at: float | None = None  # the caller's time of the last update

    def predict(self, profiled_ms: float) -> float:
        return profiled_ms * self.slowdown + self.overhead_ms

    def uncertainty_ms(self, profiled_ms: float) -> float:
        """One standard deviation of `predict(profiled_ms)`."""
        h = profiled_ms
        return math.sqrt(max(h * h * self.var_s + 2 * h * self.cov_so + self.var_o, 0.0))

    def update(self, observations: Iterable[Observation], now: float) -> LatencyModel:
        """Drift the estimate for the time since the last update, then fold in each observation."""
        dt = 0.0 if self.at is None else max(0.0, now - self.at)
        s, o = self.slowdown, self.overhead_ms
        pss = min(self.var_s + DRIFT_SLOWDOWN * dt, MAX_VAR_FACTOR * PRIOR_VAR_SLOWDOWN)
        poo = min(self.var_o + DRIFT_OVERHEAD * dt, MAX_VAR_FACTOR * PRIOR_VAR_OVERHEAD)
        pso = self.cov_so
        for ob in observations:
            if ob.count < 1 or not math.isfinite(ob.observed_ms) or ob.profiled_ms <= 0:
                continue
            h, g = ob.profiled_ms, (1.0 if ob.whole else 0.0)  # measurement row (h, g)
            expected = h * s + g * o
            # Noise relative to the expected value: relative to the observed one, low observations
            # would weigh more than high ones and bias the estimate down.
            r = (max(expected, 0.1) * (REL_NOISE + REL_NOISE_PER_SAMPLE / math.sqrt(ob.count))) ** 2
            innovation = ob.observed_ms - expected
            spread = h * (h * pss + g * pso) + g * (h * pso + g * poo)
            if innovation**2 > GATE_SIGMAS**2 * (spread + r):
                inflate = innovation**2 / (GATE_SIGMAS**2 * max(spread, 1e-9))
                pss, pso, poo = pss * inflate, pso * inflate, poo * inflate
            ph_s, ph_o = h * pss + g * pso, h * pso + g * poo  # P (h, g)^T
            total = h * ph_s + g * ph_o + r
            k_s, k_o = ph_s / total, ph_o / total
            s, o = s + k_s * innovation, o + k_o * innovation
            pss, pso, poo = pss - k_s * ph_s, pso - k_s * ph_o, poo - k_o * ph_o
            s, o = _clamp(s, SLOWDOWN_RANGE), _clamp(o, OVERHEAD_RANGE_MS)
        return LatencyModel(s, o, max(pss, 1e-9), pso, max(poo, 1e-9), now)


def _clamp(x: float, bounds: tuple[float, float]) -> float:
    return min(max(x, bounds[0]), bounds[1])
