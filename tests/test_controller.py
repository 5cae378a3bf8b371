"""The controller as a pure function: no clock, no sleeps; time is an argument."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.control.controller import MIN_SAMPLES, ControllerState, Observed, Option, Served, decide, tiers
from agent.policy.loader import parse_policy
from agent.telemetry.snapshot import Snapshot
from agent.values import Config

NOON = dt.time(12, 0)
OPTIONS = [
    Option(Config("full", 1.0), 10.0, 0.97),
    Option(Config("full", 0.5), 7.0, 0.96),
    Option(Config("pruned", 1.0), 6.0, 0.95),
    Option(Config("int8", 1.0), 8.0, 0.965),
    Option(Config("lowres", 1.0), 4.0, 0.93),
    Option(Config("lowres", 0.25), 2.0, 0.85),
]
POLICY_YAML = """
version: 1
slo: {percentile: 95, latency_ms: 20, window_s: 5, headroom: 0.8}
hysteresis: {dwell_s: 5, min_switch_interval_s: 1}
"""
POLICY = parse_policy(POLICY_YAML, "test")
IDLE = Snapshot(time=0.0, cpu_percent=5.0)


def step(state: ControllerState, observed_ms: float | None, now: float, snapshot: Snapshot = IDLE, policy=POLICY):  # type: ignore[no-untyped-def]
    obs = Observed(state.config, observed_ms, MIN_SAMPLES if observed_ms is not None else 0)
    return decide(policy, snapshot, obs, OPTIONS, state, now, NOON)


def settled(config: Config = Config("full", 1.0)) -> ControllerState:
    return ControllerState(config=config, last_switch_at=-100.0)


def test_start_chooses_the_most_accurate_feasible() -> None:
    d, s = step(ControllerState(), None, 0.0)
    assert d.switch and d.config == Config("full", 1.0) and s.config == d.config
    assert "most accurate feasible" in d.reason


def test_steps_down_at_once_on_a_violation() -> None:
    d, s = step(settled(), 30.0, 1.0)  # full observed at 30 ms: 3x slower than profiled
    assert d.switch and d.config != Config("full", 1.0)
    assert d.predicted_ms <= 0.8 * 20
    assert "step down" in d.reason and "SLO 20.0 ms" in d.reason
    assert s.last_switch_at == 1.0


def test_steps_up_only_after_the_dwell() -> None:
    state = settled(Config("lowres", 1.0))
    state = ControllerState(config=Config("lowres", 1.0), last_switch_at=0.0)
    switched_at = None
    for t in range(0, 12):
        d, state = step(state, 4.0, float(t))  # lowres runs as profiled: full is feasible again
        if d.switch:
            switched_at = t
            break
        assert "dwell" in d.reason or "keep" in d.reason
    assert switched_at == 5 and d.config == Config("full", 1.0) and "step up" in d.reason


def test_never_chooses_a_config_predicted_over_the_bound_when_one_is_feasible() -> None:
    state = settled()
    for observed in (12.0, 15.0, 18.0, 25.0, 40.0):
        d, _ = step(state, observed, 10.0)
        if d.feasible:
            assert d.predicted_ms <= d.headroom * d.slo_ms
            assert all(
                v > d.headroom * d.slo_ms
                for k, v in d.predictions.items()
                if next(o for o in OPTIONS if str(o.config) == k).accuracy
                > next(o for o in OPTIONS if o.config == d.config).accuracy
            )


def test_chooses_the_cheapest_with_a_reason_when_nothing_is_feasible() -> None:
    d, _ = step(settled(), 200.0, 1.0)  # 20x slower: even lowres@0.25 (2 ms -> ~40 ms) misses
    assert d.config == Config("lowres", 0.25) and not d.feasible
    assert "nothing is predicted under" in d.reason and "cheapest lowres@0.25" in d.reason


def rule_policy(when: str, then: str) -> object:
    return parse_policy(POLICY_YAML + f"rules:\n  - name: r\n    when: {when}\n    then: {then}\n", "test")


def test_rule_restricts_the_allowed_variants() -> None:
    p = rule_policy("{battery_below: 20, on_battery: true}", "{allow_variants: [lowres, int8]}")
    low = Snapshot(time=0, battery_percent=15, on_ac=False)
    d, _ = step(ControllerState(), None, 0.0, low, p)
    assert d.config.variant == "int8" and "rules: r" in d.reason
    d, _ = step(ControllerState(), None, 0.0, Snapshot(time=0, battery_percent=15, on_ac=True), p)
    assert d.config == Config("full", 1.0)


def test_rule_caps_the_budget() -> None:
    p = rule_policy("{temperature_above: 80}", "{max_budget: 0.5}")
    d, _ = step(ControllerState(), None, 0.0, Snapshot(time=0, temperature_c=85), p)
    assert d.config.budget <= 0.5 and d.config == Config("full", 0.5)


def test_rule_tightens_the_slo() -> None:
    p = rule_policy("{cpu_above: 90}", "{slo_ms: 8}")
    d, _ = step(ControllerState(), None, 0.0, Snapshot(time=0, cpu_percent=95), p)
    assert d.slo_ms == 8 and d.predicted_ms <= 0.8 * 8 and d.config == Config("pruned", 1.0)


def test_rule_relaxes_the_slo() -> None:
    p = rule_policy("{load_above: 3}", "{slo_scale: 2.0}")
    d, _ = step(settled(), 30.0, 1.0, Snapshot(time=0, load_avg_1m=4), p)  # 3x slower, but SLO now 40 ms
    assert d.slo_ms == 40 and not d.switch


def test_rule_prefers_a_variant() -> None:
    p = rule_policy("{time_between: ['08:00', '18:00']}", "{prefer: pruned}")
    d, _ = step(ControllerState(), None, 0.0, IDLE, p)
    assert d.config == Config("pruned", 1.0) and "preferred variant" in d.reason
    night = decide(p, IDLE, Observed(None, None, 0), OPTIONS, ControllerState(), 0.0, dt.time(23, 0))[0]
    assert night.config == Config("full", 1.0)


def test_a_config_no_longer_allowed_is_left_at_once() -> None:
    p = rule_policy("{temperature_above: 80}", "{allow_variants: [lowres]}")
    d, _ = step(settled(), 10.0, 1.0, Snapshot(time=0, temperature_c=90), p)
    assert d.switch and d.config.variant == "lowres" and "not allowed" in d.reason


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(0.1, 5.0), st.one_of(st.none(), st.floats(1.0, 300.0))), min_size=1, max_size=60))
def test_never_switches_up_faster_than_the_dwell(trace: list[tuple[float, float | None]]) -> None:
    accuracy = {o.config: o.accuracy for o in OPTIONS}
    state = ControllerState()
    now = 0.0
    last_switch = None
    for dt_s, observed in trace:
        now += dt_s
        before = state.config
        d, state = step(state, observed, now)
        if d.switch and before is not None and accuracy[d.config] > accuracy[before]:
            assert last_switch is not None and now - last_switch >= 5.0 - 1e-9, (now, last_switch)
        if d.switch:
            last_switch = now


def test_slow_decoding_is_added_to_every_prediction_not_taken_for_a_slower_model() -> None:
    """A stream of 4K frames: full@1 is observed at 22 ms p95 (SLO 20), 12 ms of it decoding
    the JPEGs. The model runs as profiled (slowdown 1), so every configuration pays the same
    12 ms on top of its model time: the controller steps down to the most accurate one that
    fits 0.8 x 20 ms that way (lowres@1, 4 + 12 ms). Without the decode term the 22 ms read as
    a 2.2x slowdown (1.6 after smoothing) that full@1 itself is predicted to fit, and it stays."""
    state = ControllerState(config=Config("full", 1.0), last_switch_at=-100.0)
    d, _ = decide(POLICY, IDLE, Observed(state.config, 22.0, MIN_SAMPLES, decode_ms=12.0), OPTIONS, state, 1.0, NOON)
    assert d.switch and d.config == Config("lowres", 1.0)
    assert d.slowdown == 1.0 and d.decode_ms == 12.0
    assert d.predicted_ms == 4.0 + 12.0 <= d.headroom * d.slo_ms
    assert "incl. 12.0 ms decoding" in d.reason
    blind, _ = decide(POLICY, IDLE, Observed(state.config, 22.0, MIN_SAMPLES), OPTIONS, state, 1.0, NOON)
    assert blind.slowdown > 1.3 and blind.config != d.config


def test_decode_term_never_makes_the_slowdown_negative() -> None:
    state = ControllerState(config=Config("full", 1.0), last_switch_at=-100.0)
    d, _ = decide(POLICY, IDLE, Observed(state.config, 5.0, MIN_SAMPLES, decode_ms=8.0), OPTIONS, state, 1.0, NOON)
    assert d.slowdown > 0 and all(v >= 8.0 for v in d.predictions.values())


def test_steps_up_from_a_small_model_whose_latency_is_mostly_overhead() -> None:
    """lowres@1 (4 ms profiled) answers in 9 ms, 5 ms of it outside the model (queueing, the
    daemon's work): the model itself runs as profiled. A ratio model reads 2.25x and predicts
    full@1 at 22.5 ms, over 0.8 x 20; the latency model predicts 10 + 5 = 15 ms and steps up."""
    state = ControllerState(config=Config("lowres", 1.0), last_switch_at=0.0)
    served = (Served(Config("lowres", 1.0), 9.0, 4.0, 30),)
    for t in range(0, 12):
        obs = Observed(state.config, 9.0, 30, served=served)
        d, state = decide(POLICY, IDLE, obs, OPTIONS, state, float(t), NOON)
        if d.switch:
            break
    assert d.switch and d.config == Config("full", 1.0) and "step up" in d.reason
    assert d.slowdown == pytest.approx(1.0, abs=0.1) and d.overhead_ms == pytest.approx(5.0, abs=0.6)
    assert d.predicted_ms == pytest.approx(15.0, abs=1.0)


def test_accuracies_inside_the_best_ones_interval_are_ties_broken_by_latency() -> None:
    """full@1 97.0% with a 95% interval down to 96.4%: int8@1 (96.5%) is as good as far as the
    table can tell and faster, so it is chosen; full@0.5 (96.0%) is outside and is not."""
    options = [
        Option(Config("full", 1.0), 10.0, 0.97, 0.964, "site"),
        Option(Config("int8", 1.0), 8.0, 0.965, 0.959, "site"),
        Option(Config("full", 0.5), 7.0, 0.96, 0.954, "site"),
    ]
    d, _ = decide(POLICY, IDLE, Observed(None, None, 0), options, ControllerState(), 0.0, NOON)
    assert d.config == Config("int8", 1.0) and d.table == "site"
    assert "as accurate as full@1" in d.reason and "site accuracy 96.5%" in d.reason
    exact = [Option(o.config, o.profiled_ms, o.accuracy, None, "test") for o in options]
    d, _ = decide(POLICY, IDLE, Observed(None, None, 0), exact, ControllerState(), 0.0, NOON)
    assert d.config == Config("full", 1.0) and "most accurate feasible" in d.reason


def test_a_tied_configuration_in_force_gives_way_to_a_faster_tie_at_once_and_stays() -> None:
    """full@1 in force, int8@1 tied and faster: one switch (no dwell: nothing is lost), then no
    flapping between the two."""
    options = [Option(Config("full", 1.0), 10.0, 0.97, 0.964), Option(Config("int8", 1.0), 8.0, 0.965, 0.959)]
    state = ControllerState(config=Config("full", 1.0), last_switch_at=-100.0)
    switches = []
    for t in range(0, 20):
        d, state = decide(POLICY, IDLE, Observed(state.config, 10.0, 30), options, state, float(t), NOON)
        if d.switch:
            switches.append((t, str(d.config), d.reason))
    assert len(switches) == 1 and switches[0][:2] == (0, "int8@1")
    assert switches[0][2].startswith("faster at equal accuracy")


def test_tiers_do_not_chain_down() -> None:
    """Ties are read from each tier's most accurate member only: 97.0 and 96.5 tie (96.5 is
    inside 97.0's interval), 96.0 does not join them although it is inside 96.5's."""
    opts = [
        Option(Config("a", 1.0), 10.0, 0.970, 0.964),
        Option(Config("b", 1.0), 9.0, 0.965, 0.959),
        Option(Config("c", 1.0), 8.0, 0.960, 0.954),
        Option(Config("d", 1.0), 7.0, 0.955, 0.949),
        Option(Config("e", 1.0), 6.0, 0.950, 0.944),
    ]
    assert {str(k): v for k, v in tiers(opts).items()} == {"a@1": 0, "b@1": 0, "c@1": 1, "d@1": 1, "e@1": 2}


def test_a_paired_test_decides_ties_where_the_table_has_one() -> None:
    """b is inside a's interval but the paired test separates them: a tier of its own. d is
    outside c's interval, but on the same images the difference is not significant: a tie.
    Where no paired test exists (a and c), the intervals decide as before."""
    a, b, c, d = (Config(n, 1.0) for n in "abcd")
    opts = [
        Option(a, 10.0, 0.970, 0.964, paired={b: 0.01}),
        Option(b, 9.0, 0.966, 0.960),
        Option(c, 8.0, 0.940, 0.934, paired={d: 0.30}),
        Option(d, 7.0, 0.925, 0.919),
    ]
    assert opts[0].ties(opts[1]) is False and opts[2].ties(opts[3]) is True
    assert opts[1].ties(opts[0]) is False  # the test is read from either side
    assert {str(k): v for k, v in tiers(opts).items()} == {"a@1": 0, "b@1": 1, "c@1": 2, "d@1": 2}


def test_a_flickering_top_configuration_does_not_walk_the_choice_down() -> None:
    """Under load only the cheaper tiers are feasible and their members come and go; the
    controller settles in the best feasible tier and never drifts to a worse one while a
    configuration of the better tier stays feasible."""
    opts = [
        Option(Config("a", 1.0), 10.0, 0.970, 0.964),
        Option(Config("c", 1.0), 8.0, 0.960, 0.954),
        Option(Config("d", 1.0), 7.0, 0.955, 0.949),
        Option(Config("e", 1.0), 6.0, 0.950, 0.944),
    ]
    profiled = {o.config: o.profiled_ms for o in opts}
    state = ControllerState(config=Config("c", 1.0), last_switch_at=-100.0)
    served = []
    for t in range(40):
        assert state.config is not None
        observed = profiled[state.config] * (2.1 if t % 2 else 1.9)  # 2x slower, wobbling: c about at the bound
        d, state = decide(POLICY, IDLE, Observed(state.config, observed, 30), opts, state, float(t), NOON)
        served.append(str(d.config))
    assert "e@1" not in served and "a@1" not in served
    assert served[-1] == "d@1"


def test_a_preferred_cheaper_variant_is_a_step_down_in_words_too() -> None:
    """A `prefer` rule moves full@1 to the cheaper, less accurate pruned@1 after the dwell: the
    reason says "step down", never "step up"."""
    p = rule_policy("{time_between: ['08:00', '18:00']}", "{prefer: pruned}")
    state = ControllerState(config=Config("full", 1.0), last_switch_at=-100.0)
    for t in range(12):
        d, state = decide(p, IDLE, Observed(state.config, 10.0, 30), OPTIONS, state, float(t), NOON)
        if d.switch:
            break
    assert d.switch and d.config == Config("pruned", 1.0)
    assert d.reason.startswith("step down") and "step up" not in d.reason
