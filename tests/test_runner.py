"""Runner admission on real onnxruntime sessions (plain classifiers from tests/test_faults.py)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from agent.errors import Overloaded
from agent.serving.runner import ESTIMATE_PROBE_S, Config, Runner, ServiceEstimate
from agent.zoo.sessions import SessionSettings, open_zoo
from tests.test_faults import NOISE, make_zoo


def test_a_stale_estimate_cannot_refuse_deadline_requests_forever(tmp_path: Path) -> None:
    runner = Runner(
        open_zoo(make_zoo(tmp_path / "zoo", {"a": (0.9, False)}), SessionSettings(intra_threads=1)),
        Config("a", 1.0),
        1,
        1,
    )
    config = Config("a", 1.0)
    try:
        # An estimate from a busy moment, just updated: a 100 ms deadline cannot be met.
        runner.service[config] = ServiceEstimate()
        runner.service[config].add(500.0, time.monotonic())
        with pytest.raises(Overloaded, match="cannot be met"):
            asyncio.run(runner.submit(lambda v: NOISE[None], deadline_ms=100))
        # Once the estimate is stale, one request runs as a probe and its time replaces it ...
        time.sleep(ESTIMATE_PROBE_S * 1.5)
        outcome = asyncio.run(runner.submit(lambda v: NOISE[None], deadline_ms=100))
        assert outcome.config == config and runner.expected_service_ms(config) < 100
        # ... so the next requests with that deadline are admitted on the new estimate.
        for _ in range(3):
            asyncio.run(runner.submit(lambda v: NOISE[None], deadline_ms=100))
    finally:
        runner.close()


def test_admission_plans_with_a_high_quantile_of_recent_compute_times() -> None:
    estimate = ServiceEstimate()
    now = time.monotonic()
    for ms in [10.0] * 27 + [30.0] * 5:  # 5 of 32 slow: the 90% quantile is slow
        estimate.add(ms, now)
    assert estimate.ms == 30.0 and estimate.typical == 10.0  # admission plans slow, a start check typical
    estimate.add(10.0, now + ESTIMATE_PROBE_S * 2)  # after a pause, only the new load counts
    assert estimate.ms == 10.0 and len(estimate.samples) == 1
