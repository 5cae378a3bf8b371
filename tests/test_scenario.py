"""The reaction-time figure of bench/slo and `edge-agent demo`, on made-up request records."""

from __future__ import annotations

from agent.cli.scenario import Reaction, Record, reaction_times


def records(rate: float, seconds: float, latency: dict[float, float] | None = None, until: float = 0.0) -> list[Record]:
    """Requests every 1/rate s taking 5 ms, or 40 ms when sent before `until`, or as `latency` says."""
    out = []
    for i in range(int(rate * seconds)):
        t = i / rate
        ms = (latency or {}).get(round(t, 3), 40.0 if t < until else 5.0)
        out.append(Record(t, ms, 200, "full@1", True, 0))
    return out


def test_a_phase_that_stays_under_the_slo_reacts_in_zero_seconds() -> None:
    assert reaction_times(records(6, 20), 25, 20, 1) == [Reaction(0.0)]


def test_one_late_request_right_after_the_step_ends_the_reaction_when_it_was_sent() -> None:
    [reaction] = reaction_times(records(6, 20, {0.5: 60.0}), 25, 20, 1)
    assert reaction == Reaction(0.5)  # not when it leaves the window, 20 requests later


def test_a_sustained_violation_reacts_when_its_last_late_request_was_sent() -> None:
    [reaction] = reaction_times(records(6, 20, until=3.0), 25, 20, 1)
    assert reaction.seconds is not None and 2.5 <= reaction.seconds <= 3.0
    assert reaction.later == ()


def test_a_late_stretch_is_no_reaction_but_is_reported() -> None:
    late = {round(t, 3): 60.0 for t in (10.0, 10.5, 11.0)}
    [reaction] = reaction_times(records(6, 20, late), 25, 20, 1)
    assert reaction.seconds == 0.0
    assert reaction.later == ((10.0, 11.0),)


def test_a_violation_to_the_end_of_the_phase_never_came_back() -> None:
    assert reaction_times(records(6, 20, until=20.0), 25, 20, 1) == [Reaction(None)]


def test_the_step_is_the_phase_start_not_its_first_request() -> None:
    shifted = [Record(r.sent + 20, r.latency_ms, 200, "full@1", True, 1) for r in records(6, 20, until=3.0)]
    [_, reaction] = reaction_times(shifted, 25, 20, 2)
    assert reaction.seconds is not None and 2.5 <= reaction.seconds <= 3.0
