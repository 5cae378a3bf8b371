"""The controller's latency model on synthetic traces: contention that stretches the model's
compute, contention that adds a fixed delay, and both; the predictions must converge for every
configuration, served or not, and follow a step in load at once."""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable

import pytest

from agent.control.latency_model import LatencyModel, Observation

PROFILED = {"lowres@0.25": 3.0, "lowres@1": 5.0, "pruned@1": 9.0, "full@1": 16.0}
Truth = Callable[[float], tuple[float, float]]  # time -> (slowdown, overhead ms)


def trace(
    truth: Truth,
    served: Callable[[int], list[str]],
    steps: int = 80,
    tick_s: float = 0.5,
    noise: float = 0.05,
    model_timed: bool = True,
    seed: int = 0,
) -> list[LatencyModel]:
    """Feed one update per tick, as the daemon's controller does, and return the model after each."""
    rng = random.Random(seed)
    model, history = LatencyModel(), []
    for i in range(steps):
        now = i * tick_s
        slowdown, overhead = truth(now)
        observations = []
        for name in served(i):
            compute = PROFILED[name] * slowdown * (1 + rng.gauss(0, noise))
            whole = compute + overhead * (1 + rng.gauss(0, noise))
            observations.append(Observation(PROFILED[name], whole, 30))
            if model_timed:
                observations.append(Observation(PROFILED[name], compute, 30, whole=False))
        model = model.update(observations, now)
        history.append(model)
    return history


def one(name: str) -> Callable[[int], list[str]]:
    return lambda i: [name]


def alternating(a: str, b: str, every: int = 10) -> Callable[[int], list[str]]:
    return lambda i: [a] if (i // every) % 2 else [b]


def assert_converged(model: LatencyModel, slowdown: float, overhead: float, tolerance: float = 0.06) -> None:
    for name, profiled in PROFILED.items():
        truth = profiled * slowdown + overhead
        assert model.predict(profiled) == pytest.approx(truth, rel=tolerance), name


@pytest.mark.parametrize(
    ("slowdown", "overhead"),
    [(2.2, 0.0), (1.0, 8.0), (1.7, 5.0)],
    ids=["contention stretches compute", "contention adds a fixed delay", "both"],
)
@pytest.mark.parametrize("served", ["one small configuration", "switching between two"])
def test_predictions_converge_for_every_configuration(slowdown: float, overhead: float, served: str) -> None:
    """Whatever contention does, the prediction for each configuration, served or not, ends
    within 6% of the truth: the model's own time pins the slowdown, the whole request's time
    the overhead, even when only lowres@1 has been served."""
    pattern = one("lowres@1") if served.startswith("one") else alternating("lowres@1", "full@1")
    final = trace(lambda t: (slowdown, overhead), pattern)[-1]
    assert final.slowdown == pytest.approx(slowdown, rel=0.06)
    assert final.overhead_ms == pytest.approx(overhead, abs=0.6 + 0.06 * overhead)
    assert_converged(final, slowdown, overhead)


def test_whole_request_times_of_two_configurations_alone_tell_slowdown_from_overhead() -> None:
    """Without model-only times (a trace replay), serving configurations of different cost is
    what separates the two unknowns."""
    final = trace(lambda t: (1.5, 6.0), alternating("lowres@1", "full@1"), model_timed=False)[-1]
    assert_converged(final, 1.5, 6.0, tolerance=0.08)


def test_a_ratio_alone_overstates_what_a_small_model_gains() -> None:
    """A fixed 8 ms outside the model, lowres@1 in force: the ratio (observed / profiled, 13 / 5
    = 2.6x) predicts full@1 at 42 ms, the affine model at its true 24 ms."""
    final = trace(lambda t: (1.0, 8.0), one("lowres@1"))[-1]
    ratio = (PROFILED["lowres@1"] + 8.0) / PROFILED["lowres@1"]
    assert PROFILED["full@1"] * ratio > 40
    assert final.predict(PROFILED["full@1"]) == pytest.approx(24.0, rel=0.06)


def test_a_load_step_is_followed_within_two_ticks() -> None:
    """Idle, then 2 cores busy from t = 20 s (slowdown 1 -> 2.5, queueing 1 -> 4 ms): the
    prediction for the configuration in force is within 15% of the new truth two ticks later
    (the daemon ticks every 0.25-0.5 s), not after a slow drift."""
    history = trace(lambda t: (1.0, 1.0) if t < 20 else (2.5, 4.0), one("full@1"), steps=60)
    step_index = 40
    after = history[step_index + 1]
    assert after.predict(PROFILED["full@1"]) == pytest.approx(16.0 * 2.5 + 4.0, rel=0.15)
    assert_converged(history[-1], 2.5, 4.0, tolerance=0.08)


def test_noise_is_filtered_not_chased() -> None:
    """20% noise on every observation: over the settled half of the trace the slowdown's mean is
    within 5% of the truth and it moves less than half as much as the observations do."""
    history = trace(lambda t: (1.4, 2.0), one("pruned@1"), noise=0.2, steps=160)
    settled = [m.slowdown for m in history[80:]]
    mean = statistics.fmean(settled)
    assert mean == pytest.approx(1.4, rel=0.05)
    assert statistics.pstdev(settled) / mean < 0.5 * 0.2


def test_no_observation_keeps_the_estimate_and_grows_its_uncertainty() -> None:
    model = LatencyModel().update([Observation(10.0, 25.0, 30), Observation(10.0, 20.0, 30, whole=False)], 0.0)
    later = model.update([], 60.0)
    assert (later.slowdown, later.overhead_ms) == (model.slowdown, model.overhead_ms)
    assert later.uncertainty_ms(10.0) > model.uncertainty_ms(10.0)


def test_estimates_stay_in_range_on_absurd_observations() -> None:
    model = LatencyModel().update([Observation(10.0, 1e9, 30), Observation(10.0, 1e9, 30, whole=False)], 0.0)
    assert model.slowdown <= 50.0 and model.overhead_ms <= 10_000.0
    model = model.update([Observation(10.0, 0.001, 30), Observation(10.0, 0.001, 30, whole=False)], 1.0)
    assert model.slowdown >= 0.25 and model.overhead_ms >= 0.0
