"""The reaction-time figure of bench/slo and `edge-agent demo`, on made-up request records."""

from __future__ import annotations

from agent.scenario import Record, reaction_times


def records(rate: float, seconds: float, latency: dict[float, float] | None = None, until: float = 0.0) -> list[Record]:
    """Requests every 1/rate s taking 5 ms, or 40 ms when sent before `until`, or as `latency` says."""
    out = []
    for i in range(int(rate * seconds)):
        t = i / rate
        ms = (latency or {}).get(round(t, 3), 40.0 if t < until else 5.0)
        out.append(Record(t, ms, 200, "full@1", True, 0))
    return out


def test_one_late_request_at_a_low_rate_is_not_a_slow_reaction() -> None:
    assert reaction_times(records(6, 20, {5.5: 60.0}), 25, 20, 1) == [0.0]


def test_a_sustained_violation_reacts_when_its_last_late_request_was_sent() -> None:
    reaction = reaction_times(records(6, 20, until=3.0), 25, 20, 1)[0]
    assert reaction is not None and 2.5 <= reaction <= 3.0  # not 3 s plus the window


def test_a_violation_to_the_end_of_the_phase_never_came_back() -> None:
    assert reaction_times(records(6, 20, until=20.0), 25, 20, 1) == [None]
