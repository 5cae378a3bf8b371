"""The latency-SLO controller: a pure function from (policy, telemetry, observed latency,
profiled latency table, previous state, now, local time of day) to (decision, new state).

It predicts every allowed configuration's latency percentile as profile x slowdown + overhead
(`latency_model`, a Kalman filter fed by every configuration in the latency window, the whole
request's time and the model's run apart) plus the time bodies take to decode, and picks,
among the configurations predicted under headroom x SLO, one of the most accurate tier, the
fastest in it. Tiers group accuracies the table cannot tell apart: the most accurate allowed
configuration and every one it ties with form the first, the most accurate of the rest and its
ties the next, and so on. Two configurations tie when a paired test of the table (the same
images scored by both) does not separate them, or, where the table has none between them, when
one's accuracy lies inside the other's 95% interval (on a site table of a few hundred images a
2-point gap is noise; on the zoo's 4,000 paired test images a 0.4-point one often is not). Tiers
depend on the table and the policy only, never on the load, so the choice does not drift down
a chain of ties as configurations come and go from the feasible set.
It steps down at once when the configuration in force is predicted (or observed) over the
bound, and steps up only after a more accurate configuration has been feasible for the dwell
time. No clock and no I/O: the daemon, `policy simulate` and the tests drive the same code.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace

from agent.control.latency_model import LatencyModel, Observation
from agent.control.rules import Constraints, resolve
from agent.policy.schema import Policy
from agent.telemetry.snapshot import Snapshot
from agent.values import Config
from agent.zoo.accuracy_tables import Estimate, manifest_table
from agent.zoo.manifest import LatencyProfile, Manifest

#: Fewest requests of a configuration in the window before its latency informs the model.
MIN_SAMPLES = 5
#: A paired test below this separates two configurations' accuracies.
PAIRED_ALPHA = 0.05


@dataclass(frozen=True)
class Served:
    """One configuration's requests in the latency window: the percentile of their whole time
    in the daemon (queue + decode + model) and of the model's run alone (None: not timed)."""

    config: Config
    percentile_ms: float
    model_ms: float | None
    count: int


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
    #: Every configuration in the window (the one in force included); empty: only `config`'s
    #: whole-request percentile is known, and that alone updates the model.
    served: tuple[Served, ...] = ()


@dataclass(frozen=True)
class Option:
    """One configuration the controller may choose: its profiled latency and its accuracy in the
    table in force, with the lower end of that figure's 95% interval (ties are read from it)."""

    config: Config
    profiled_ms: float
    accuracy: float
    accuracy_low: float | None = None
    table: str = "test"
    #: p-values of the table's paired tests against other configurations (see `ties`).
    paired: dict[Config, float] = field(default_factory=dict)

    @property
    def tie_floor(self) -> float:
        """Accuracies at or above this are inside this option's 95% interval."""
        return self.accuracy if self.accuracy_low is None else min(self.accuracy_low, self.accuracy)

    def ties(self, other: Option) -> bool:
        """Whether `other` (no more accurate) is as good as this option as far as the table can
        tell: a paired test between them, where the table has one, decides (p >= 0.05: not
        separated); otherwise `other`'s accuracy must lie inside this option's interval."""
        p = self.paired.get(other.config, other.paired.get(self.config))
        if p is not None:
            return p >= PAIRED_ALPHA
        return other.accuracy >= self.tie_floor


@dataclass(frozen=True)
class ControllerState:
    config: Config | None = None
    latency: LatencyModel = field(default_factory=LatencyModel)
    last_switch_at: float = -math.inf
    better_since: float | None = None  # since when a more accurate configuration is feasible

    @property
    def slowdown(self) -> float:
        return self.latency.slowdown


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
    overhead_ms: float = 0.0
    table: str = "test"


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
    manifest: Manifest,
    table: dict[str, LatencyProfile],
    loaded: set[str],
    threads: int,
    percentile: float,
    accuracy: dict[Config, Estimate] | None = None,
    accuracy_table: str = "test",
) -> list[Option]:
    """Every loaded variant x budget with a profiled latency, with its accuracy in `accuracy`
    (the manifest's test figures when None; a configuration the table lacks ranks last)."""
    estimates = accuracy if accuracy is not None else manifest_table(manifest, "test").estimates
    options = []
    for variant in manifest.variants:
        if variant.name not in loaded or variant.name not in table:
            continue
        for budget in variant.budgets:
            latency = profiled_percentile(table[variant.name], budget, threads, percentile)
            if latency is None:
                continue
            config = Config(variant.name, budget)
            est = estimates.get(config)
            options.append(
                Option(
                    config,
                    latency,
                    est.accuracy if est else 0.0,
                    est.low if est else None,
                    accuracy_table,
                    est.paired if est else {},
                )
            )
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
    latency = state.latency.update(_observations(observed, by_config), now)
    plan = _plan(c, options, latency, observed.decode_ms)
    base = replace(state, latency=latency)
    if current is None or current not in plan.predicted:
        why = "start" if state.config is None else f"{state.config} is not allowed or not available now"
        return plan.decision(
            plan.target.config,
            True,
            f"{why}: {plan.why_target}",
            replace(base, config=plan.target.config, last_switch_at=now, better_since=None),
        )
    return _step(plan, observed, by_config[current], base, now)


def _observations(observed: Observed, by_config: dict[Config, Option]) -> list[Observation]:
    """What the window says about the latency model: per configuration with enough requests,
    its whole time less decoding, and its model run alone where timed."""
    served = observed.served
    if not served and observed.config is not None and observed.percentile_ms is not None:
        served = (Served(observed.config, observed.percentile_ms, None, observed.count),)
    out = []
    for item in served:
        option = by_config.get(item.config)
        if option is None or item.count < MIN_SAMPLES or not math.isfinite(item.percentile_ms):
            continue
        whole = max(item.percentile_ms - observed.decode_ms, 0.05 * item.percentile_ms)
        out.append(Observation(option.profiled_ms, whole, item.count))
        if item.model_ms is not None and math.isfinite(item.model_ms):
            out.append(Observation(option.profiled_ms, item.model_ms, item.count, whole=False))
    return out


@dataclass(frozen=True)
class _Plan:
    """What the policy allows right now, each option's predicted latency and the best target."""

    c: Constraints
    latency: LatencyModel
    decode_ms: float
    predicted: dict[Config, float]
    feasible: bool
    target: Option
    why_target: str
    #: Accuracy tier of every allowed option: 0 the most accurate and its ties, then 1, ...
    tier: dict[Config, int]

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
            self.latency.slowdown,
            self.feasible,
            c.rules,
            {str(k): round(v, 3) for k, v in self.predicted.items()},
            self.decode_ms,
            self.latency.overhead_ms,
            self.target.table,
        )
        return decision, new_state


def tiers(options: list[Option]) -> dict[Config, int]:
    """Accuracy tiers, most accurate first: each tier is the most accurate option not yet placed
    and every remaining one it ties with (`Option.ties`)."""
    out: dict[Config, int] = {}
    rest = sorted(options, key=lambda o: (-o.accuracy, o.profiled_ms))
    tier = 0
    while rest:
        anchor = rest[0]
        for o in rest:
            if o is anchor or anchor.ties(o):
                out[o.config] = tier
        rest = [o for o in rest if o.config not in out]
        tier += 1
    return out


def _plan(c: Constraints, options: list[Option], latency: LatencyModel, decode_ms: float) -> _Plan:
    allowed = [o for o in options if _allowed(o.config, c)]
    if not allowed:  # the rules leave nothing that is loaded: fall back to every option
        allowed = list(options)
    bound = c.headroom * c.slo_ms
    predicted = {o.config: latency.predict(o.profiled_ms) + decode_ms for o in allowed}
    tier = tiers(allowed)
    decode = f" incl. {_ms(decode_ms)} decoding" if decode_ms >= 0.05 else ""
    feasible = [o for o in allowed if predicted[o.config] <= bound]
    if feasible:
        preferred = [o for o in feasible if c.prefer and o.config.variant == c.prefer]
        pool = preferred or feasible
        target = min(pool, key=lambda o: (tier[o.config], predicted[o.config], -o.accuracy))
        anchor = max((o for o in allowed if tier[o.config] == tier[target.config]), key=lambda o: o.accuracy)
        if preferred:
            how = "preferred variant"
        elif anchor.config == target.config:
            how = "most accurate feasible"
        else:
            how = f"fastest feasible as accurate as {anchor.config} ({anchor.accuracy:.1%}, a tie in the table)"
        why_target = (
            f"{target.config} predicted {_ms(predicted[target.config])}{decode} <= {c.headroom:g} x SLO "
            f"{_ms(c.slo_ms)}, {how} ({target.table} accuracy {target.accuracy:.1%})"
        )
    else:
        target = min(allowed, key=lambda o: predicted[o.config])
        why_target = (
            f"nothing is predicted under {c.headroom:g} x SLO {_ms(c.slo_ms)}: cheapest {target.config} "
            f"predicted {_ms(predicted[target.config])}{decode}"
        )
    return _Plan(c, latency, decode_ms, predicted, bool(feasible), target, why_target, tier)


def _step(
    plan: _Plan, observed: Observed, cur: Option, base: ControllerState, now: float
) -> tuple[Decision, ControllerState]:
    """From an allowed configuration in force: step down at once, keep, or step up after the dwell."""
    c, predicted, target = plan.c, plan.predicted, plan.target
    model = f"slowdown {plan.latency.slowdown:.2f}x, overhead {_ms(plan.latency.overhead_ms)}"
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
            f"step down, {what} ({model}): {plan.why_target}",
            replace(base, config=target.config, last_switch_at=now, better_since=None),
        )
    preferred = bool(c.prefer) and target.config.variant == c.prefer and current.variant != c.prefer
    tier = plan.tier
    better = (
        target.config != current
        and predicted[target.config] <= bound
        and (tier[target.config] < tier[current] or preferred)
    )
    faster_tie = (
        not better
        and target.config != current
        and plan.feasible
        and tier[target.config] == tier[current]
        and predicted[target.config] < predicted[current]
        and now - base.last_switch_at >= c.min_switch_interval_s
    )
    if faster_tie:  # as accurate as far as the table can tell, and faster: no dwell to wait for
        return plan.decision(
            target.config,
            True,
            f"faster at equal accuracy: {plan.why_target}",
            replace(base, config=target.config, last_switch_at=now, better_since=None),
        )
    if not better:
        return plan.decision(
            current,
            False,
            f"keep {current}: predicted {_ms(predicted[current])}, {model}",
            replace(base, better_since=None),
        )
    since = base.better_since if base.better_since is not None else now
    dwell = max(c.dwell_s, c.min_switch_interval_s)
    waited = now - max(since, base.last_switch_at)
    if waited >= dwell:
        return plan.decision(
            target.config,
            True,
            f"{_direction(cur, target)} after {waited:.1f} s >= dwell {dwell:g} s: {plan.why_target}",
            replace(base, config=target.config, last_switch_at=now, better_since=None),
        )
    return plan.decision(
        current,
        False,
        f"keep {current}: {target.config} feasible for {waited:.1f} s of dwell {dwell:g} s",
        replace(base, better_since=since),
    )


def _direction(cur: Option, target: Option) -> str:
    """The words for a switch: up to a more accurate configuration, down to a cheaper one (a
    preferred variant may be either), whatever made the controller move."""
    if target.accuracy > cur.accuracy:
        return "step up"
    if target.profiled_ms < cur.profiled_ms:
        return "step down"
    return "switch"


def _allowed(config: Config, c: Constraints) -> bool:
    if c.variants is not None and config.variant not in c.variants:
        return False
    return any(abs(config.budget - b) < 1e-9 for b in c.budgets)
