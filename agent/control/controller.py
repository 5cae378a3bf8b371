"""The latency-SLO controller: a pure function from (policy, telemetry, observed latency,
profiled latency table, previous state, now, local time of day) to (decision, new state).

It estimates how much slower the device runs now than when it was profiled (observed /
profiled latency of the configuration in force, smoothed by an EWMA), predicts every allowed
configuration's latency percentile as profile x slowdown, and picks the most accurate one
predicted under headroom x SLO. It steps down at once when the configuration in force is
predicted (or observed) over that bound, and steps up only after a better configuration has
been feasible for the dwell time. No clock and no I/O: the daemon, `policy simulate` and the
tests drive the same code.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace

from agent.control.rules import Constraints, resolve
from agent.policy.schema import Policy
from agent.telemetry.snapshot import Snapshot
from agent.values import Config
from agent.zoo.manifest import LatencyProfile, Manifest

#: Fewest samples of the configuration in force before its latency updates the slowdown.
MIN_SAMPLES = 5
#: Weight of a new observation in the slowdown EWMA.
ALPHA = 0.5
SLOWDOWN_RANGE = (0.25, 50.0)


@dataclass(frozen=True)
class Observed:
    """The latency window of the configuration in force: its percentile and sample count, and
    the median time recent requests spent decoding their body into the model's input. Decoding
    happens outside the model, costs every configuration about the same (a 4K JPEG frame far
    more than a 128 px PNG), and does not scale with the model's slowdown, so it is taken out
    of the slowdown and added to every prediction."""

    config: Config | None
    percentile_ms: float | None
    count: int
    decode_ms: float = 0.0


@dataclass(frozen=True)
class Option:
    """One configuration the controller may choose: its profiled latency and accuracy."""

    config: Config
    profiled_ms: float
    accuracy: float


@dataclass(frozen=True)
class ControllerState:
    config: Config | None = None
    slowdown: float = 1.0
    last_switch_at: float = -math.inf
    better_since: float | None = None  # since when a more accurate configuration is feasible


@dataclass(frozen=True)
class Decision:
    config: Config
    switch: bool
    reason: str
    slo_ms: float
    percentile: float
    headroom: float
    predicted_ms: float
    slowdown: float
    feasible: bool
    rules: tuple[str, ...] = ()
    predictions: dict[str, float] = field(default_factory=dict)
    decode_ms: float = 0.0


def profiled_percentile(profile: LatencyProfile, budget: float, threads: int, percentile: float) -> float | None:
    """The profiled latency at `percentile`, interpolated from p50/p95 (extrapolated above p95)."""
    point = profile.lookup(budget, threads) or profile.lookup(budget, 1) or profile.lookup(budget, 2)
    if point is None:
        return None
    if percentile <= 50:
        return point.p50_ms
    spread = point.p95_ms - point.p50_ms
    return point.p50_ms + spread * (percentile - 50) / 45


def options_from_manifest(
    manifest: Manifest, table: dict[str, LatencyProfile], loaded: set[str], threads: int, percentile: float
) -> list[Option]:
    """Every loaded variant x budget with a profiled latency, with its test accuracy."""
    options = []
    for variant in manifest.variants:
        if variant.name not in loaded or variant.name not in table:
            continue
        for budget in variant.budgets:
            latency = profiled_percentile(table[variant.name], budget, threads, percentile)
            if latency is None:
                continue
            acc = variant.accuracy_at(budget)
            options.append(Option(Config(variant.name, budget), latency, acc if acc is not None else 0.0))
    return options


def _ms(x: float) -> str:
    return f"{x:.1f} ms"


def decide(
    policy: Policy,
    snapshot: Snapshot,
    observed: Observed,
    options: list[Option],
    state: ControllerState,
    now: float,
    local_time: dt.time,
) -> tuple[Decision, ControllerState]:
    """One controller step. `options` must be non-empty; `now` is seconds on any clock and
    `local_time` the time of day the policy's time windows are read against (the caller's)."""
    c = resolve(policy, snapshot, local_time)
    by_config = {o.config: o for o in options}
    current = state.config if state.config in by_config else None
    slowdown = _slowdown(state.slowdown, observed, current, by_config)
    plan = _plan(c, options, slowdown, observed.decode_ms)
    base = replace(state, slowdown=slowdown)
    if current is None or current not in plan.predicted:
        why = "start" if state.config is None else f"{state.config} is not allowed or not available now"
        return plan.decision(
            plan.target.config,
            True,
            f"{why}: {plan.why_target}",
            replace(base, config=plan.target.config, last_switch_at=now, better_since=None),
        )
    return _step(plan, observed, by_config[current], base, now)


def _slowdown(previous: float, observed: Observed, current: Config | None, by_config: dict[Config, Option]) -> float:
    """How much slower than profiled the configuration in force runs now (EWMA, bounded)."""
    if current is None or observed.config != current or observed.count < MIN_SAMPLES or not observed.percentile_ms:
        return previous
    model_ms = max(observed.percentile_ms - observed.decode_ms, 0.05 * observed.percentile_ms)
    ratio = model_ms / by_config[current].profiled_ms
    slowdown = (1 - ALPHA) * previous + ALPHA * ratio
    return min(max(slowdown, SLOWDOWN_RANGE[0]), SLOWDOWN_RANGE[1])


@dataclass(frozen=True)
class _Plan:
    """What the policy allows right now, each option's predicted latency and the best target."""

    c: Constraints
    slowdown: float
    decode_ms: float
    predicted: dict[Config, float]
    feasible: bool
    target: Option
    why_target: str

    def rank(self, o: Option) -> tuple[float, float]:
        return (o.accuracy, -self.predicted[o.config])

    def decision(
        self, config: Config, switch: bool, reason: str, new_state: ControllerState
    ) -> tuple[Decision, ControllerState]:
        c = self.c
        rules = f" [rules: {', '.join(c.rules)}]" if c.rules else ""
        notes = f" ({'; '.join(c.notes)})" if c.notes else ""
        decision = Decision(
            config,
            switch,
            reason + rules + notes,
            c.slo_ms,
            c.percentile,
            c.headroom,
            self.predicted.get(config, math.nan),
            self.slowdown,
            self.feasible,
            c.rules,
            {str(k): round(v, 3) for k, v in self.predicted.items()},
            self.decode_ms,
        )
        return decision, new_state


def _plan(c: Constraints, options: list[Option], slowdown: float, decode_ms: float) -> _Plan:
    allowed = [o for o in options if _allowed(o.config, c)]
    if not allowed:  # the rules leave nothing that is loaded: fall back to every option
        allowed = list(options)
    bound = c.headroom * c.slo_ms
    predicted = {o.config: o.profiled_ms * slowdown + decode_ms for o in allowed}
    decode = f" incl. {_ms(decode_ms)} decoding" if decode_ms >= 0.05 else ""
    feasible = [o for o in allowed if predicted[o.config] <= bound]
    if feasible:
        preferred = [o for o in feasible if c.prefer and o.config.variant == c.prefer]
        target = max(preferred or feasible, key=lambda o: (o.accuracy, -predicted[o.config]))
        why_target = (
            f"{target.config} predicted {_ms(predicted[target.config])}{decode} <= {c.headroom:g} x SLO "
            f"{_ms(c.slo_ms)}, "
            f"{'preferred variant' if preferred else 'most accurate feasible'} "
            f"(test accuracy {target.accuracy:.1%})"
        )
    else:
        target = min(allowed, key=lambda o: predicted[o.config])
        why_target = (
            f"nothing is predicted under {c.headroom:g} x SLO {_ms(c.slo_ms)}: cheapest {target.config} "
            f"predicted {_ms(predicted[target.config])}{decode}"
        )
    return _Plan(c, slowdown, decode_ms, predicted, bool(feasible), target, why_target)


def _step(
    plan: _Plan, observed: Observed, cur: Option, base: ControllerState, now: float
) -> tuple[Decision, ControllerState]:
    """From an allowed configuration in force: step down at once, keep, or step up after the dwell."""
    c, predicted, target, slowdown = plan.c, plan.predicted, plan.target, plan.slowdown
    current, bound = cur.config, c.headroom * c.slo_ms
    violated = (
        observed.config == current
        and observed.percentile_ms is not None
        and observed.count >= MIN_SAMPLES
        and observed.percentile_ms > c.slo_ms
    )
    over = predicted[current] > bound
    if target.config != current and (violated or over) and predicted[target.config] < predicted[current]:
        what = (
            f"p{c.percentile:g} {_ms(observed.percentile_ms or 0)} > SLO {_ms(c.slo_ms)}"
            if violated
            else f"{current} predicted {_ms(predicted[current])} > {c.headroom:g} x SLO {_ms(c.slo_ms)}"
        )
        return plan.decision(
            target.config,
            True,
            f"step down, {what} (slowdown {slowdown:.2f}x): {plan.why_target}",
            replace(base, config=target.config, last_switch_at=now, better_since=None),
        )
    better = target.config != current and plan.rank(target) > plan.rank(cur) and predicted[target.config] <= bound
    if not better:
        return plan.decision(
            current,
            False,
            f"keep {current}: predicted {_ms(predicted[current])}, slowdown {slowdown:.2f}x",
            replace(base, better_since=None),
        )
    since = base.better_since if base.better_since is not None else now
    dwell = max(c.dwell_s, c.min_switch_interval_s)
    waited = now - max(since, base.last_switch_at)
    if waited >= dwell:
        return plan.decision(
            target.config,
            True,
            f"step up after {waited:.1f} s >= dwell {dwell:g} s: {plan.why_target}",
            replace(base, config=target.config, last_switch_at=now, better_since=None),
        )
    return plan.decision(
        current,
        False,
        f"keep {current}: {target.config} feasible for {waited:.1f} s of dwell {dwell:g} s",
        replace(base, better_since=since),
    )


def _allowed(config: Config, c: Constraints) -> bool:
    if c.variants is not None and config.variant not in c.variants:
        return False
    return any(abs(config.budget - b) < 1e-9 for b in c.budgets)
