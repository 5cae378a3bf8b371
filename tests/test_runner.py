"""The runner and its admission, in process on real onnxruntime sessions (plain classifiers
from tests/zoos.py), with an injected clock: no sleeps, deterministic estimates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from agent.errors import BadInput, NotFound, Overloaded, VariantUnavailable
from agent.serving.admission import ESTIMATE_PROBE_S, Clock, ServiceEstimate
from agent.serving.runner import Outcome, Runner
from agent.values import Config
from agent.zoo.sessions import LoadedVariant, SessionSettings, open_zoo
from tests.zoos import NOISE, make_zoo


class FakeClock:
    """Both clocks of the runner, moved by the test."""

    def __init__(self) -> None:
        self.wall = 1_000_000.0
        self.mono = 100.0

    def clock(self) -> Clock:
        return Clock(wall=lambda: self.wall, monotonic=lambda: self.mono)

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds


@pytest.fixture
def fake() -> FakeClock:
    return FakeClock()


@pytest.fixture
def runner(tmp_path: Path, fake: FakeClock) -> Iterator[Runner]:
    zoo = open_zoo(make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)}), SessionSettings(1))
    r = Runner(zoo, Config("a", 1.0), workers=1, queue_size=1, clock=fake.clock())
    yield r
    r.close()


def run(runner: Runner, deadline_ms: float | None = None, fixed: Config | None = None) -> Outcome:
    return asyncio.run(runner.submit(lambda v: NOISE[None], deadline_ms, fixed))


def test_a_stale_estimate_cannot_refuse_deadline_requests_forever(runner: Runner, fake: FakeClock) -> None:
    config = Config("a", 1.0)
    # An estimate from a busy moment, just updated: a 100 ms deadline cannot be met.
    runner.service[config] = ServiceEstimate()
    runner.service[config].add(500.0, fake.mono)
    with pytest.raises(Overloaded, match="cannot be met"):
        run(runner, deadline_ms=100)
    # Once the estimate is stale, one request runs as a probe and its time replaces it ...
    fake.advance(ESTIMATE_PROBE_S * 1.5)
    outcome = run(runner, deadline_ms=100)
    assert outcome.config == config and runner.expected_service_ms(config) < 100
    # ... so the next requests with that deadline are admitted on the new estimate.
    for _ in range(3):
        run(runner, deadline_ms=100)


def test_admission_plans_with_a_high_quantile_of_recent_compute_times() -> None:
    estimate = ServiceEstimate()
    now = 50.0
    for ms in [10.0] * 27 + [30.0] * 5:  # 5 of 32 slow: the 90% quantile is slow
        estimate.add(ms, now)
    assert estimate.ms == 30.0 and estimate.typical == 10.0  # admission plans slow, a start check typical
    estimate.add(10.0, now + ESTIMATE_PROBE_S * 2)  # after a pause, only the new load counts
    assert estimate.ms == 10.0 and len(estimate.samples) == 1


def test_a_full_queue_refuses_with_retry_after_and_a_released_ticket_frees_its_place(runner: Runner) -> None:
    tickets = [runner.admit(), runner.admit()]  # 1 worker + 1 waiting: full
    with pytest.raises(Overloaded, match="queue full") as refused:
        runner.admit()
    assert refused.value.retry_after_s > 0 and runner.inflight == 2
    runner.release(tickets[0])
    runner.release(tickets[0])  # twice is once
    assert runner.inflight == 1
    runner.admit()


def test_a_finished_request_gives_its_place_back_and_times_itself_on_the_injected_clock(
    runner: Runner, fake: FakeClock
) -> None:
    outcome = run(runner)
    assert runner.inflight == 0
    assert outcome.queue_ms == 0 and outcome.compute_ms == 0  # the clock did not move
    stats = runner.window.stats(fake.mono)
    assert stats["count"] == 1


def test_a_batch_is_recorded_as_its_per_image_share(runner: Runner, fake: FakeClock) -> None:
    """A v2 batch runs in one call; the windows and the estimate see what one image cost, so a
    batch does not read as a slower device."""
    per_image_ms = 4.0

    def decode(images: int) -> Callable[[LoadedVariant], np.ndarray]:
        def prepare(variant: LoadedVariant) -> np.ndarray:
            fake.advance(images * per_image_ms / 1000)  # decoding takes per_image_ms an image
            return np.repeat(NOISE[None], images, axis=0)

        return prepare

    config = Config("a", 1.0)
    for images in (1, 3):
        outcome = asyncio.run(runner.submit(decode(images)))
        assert outcome.prediction.probs.shape[0] == images
        assert outcome.decode_ms == pytest.approx(images * per_image_ms)  # the request's own times stay whole
    assert list(runner.decode_window.values(fake.mono)) == pytest.approx([per_image_ms, per_image_ms])
    assert list(runner.window.values(fake.mono)) == pytest.approx([per_image_ms, per_image_ms])
    assert runner.expected_service_ms(config) == pytest.approx(per_image_ms)


def test_an_out_of_service_variant_is_refused_when_its_request_starts(runner: Runner) -> None:
    ticket = runner.admit(fixed=Config("b", 1.0))  # admitted while in service
    runner.retire("b", "file changed")
    with pytest.raises(VariantUnavailable, match="out of service"):
        asyncio.run(runner.run(ticket, lambda v: NOISE[None]))
    assert runner.inflight == 0
    with pytest.raises(VariantUnavailable):
        runner.switch(Config("b", 1.0), "test")  # nor can it be put in force
    assert runner.validate(Config("b", 1.0)) == Config("b", 1.0)  # a request may still name it


def test_validate_refuses_unknown_variants_and_budgets_it_does_not_offer(runner: Runner) -> None:
    with pytest.raises(NotFound):
        runner.validate(Config("zzz", 1.0))
    with pytest.raises(BadInput, match="not offered"):
        runner.validate(Config("a", 0.5))


def test_a_pin_holds_for_its_seconds_on_the_monotonic_clock(runner: Runner, fake: FakeClock) -> None:
    pin = runner.pin(Config("b", 1.0), 60, "maintenance")
    assert pin.until == fake.wall + 60 and runner.current == Config("b", 1.0)
    assert not runner.switch(Config("a", 1.0), "controller")  # ignored while pinned
    fake.advance(59)
    runner.expire_pin()
    assert runner.pin_state is not None and runner.pin_left_s() == 1
    fake.advance(1)
    runner.expire_pin()
    assert runner.pin_state is None and runner.switch(Config("a", 1.0), "controller")
    assert runner.history[-1].at == fake.wall


def test_a_wall_clock_step_neither_expires_nor_stretches_a_pin(runner: Runner, fake: FakeClock) -> None:
    saved: list[object] = []
    runner.on_pin.append(saved.append)
    runner.pin(Config("b", 1.0), 600, "maintenance")
    fake.wall += 3600  # NTP steps the clock an hour forward: the wall-clock `until` is long past
    fake.mono += 10
    runner.expire_pin()
    assert runner.pin_state is not None and runner.pin_left_s() == 590
    restated = runner.restate_pin()  # the daemon's step watch does this
    assert restated is not None and restated.until == fake.wall + 590 and saved[-1] == restated
    fake.wall -= 7200  # and an hour back from where it started
    fake.mono += 589
    runner.expire_pin()
    assert runner.pin_state is not None
    fake.mono += 1
    runner.expire_pin()
    assert runner.pin_state is None and saved[-1] is None
