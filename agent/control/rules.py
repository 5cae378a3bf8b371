"""Which policy rules hold right now, and what they leave the controller: `resolve`.

Pure: local time is an argument, so the daemon, `policy simulate` and the tests get the same
answer for the same inputs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

from agent.policy.schema import Condition, Policy
from agent.telemetry.snapshot import Snapshot


@dataclass(frozen=True)
class Constraints:
    """What the controller must respect right now: the SLO after rules, and the allowed set.
    `variants` None means every loaded variant; `budgets` is never empty, largest first."""

    slo_ms: float
    percentile: float
    window_s: float
    headroom: float
    dwell_s: float
    min_switch_interval_s: float
    variants: frozenset[str] | None
    budgets: tuple[float, ...]
    prefer: str | None
    rules: tuple[str, ...]
    #: Conflicts resolve() had to settle (e.g. two rules allowing disjoint variants), for reasons/logs.
    notes: tuple[str, ...] = field(default=())


def _time_of(text: str) -> dt.time:
    hours, minutes = text.split(":")
    return dt.time(int(hours), int(minutes))


def _in_window(now: dt.time, start: dt.time, end: dt.time) -> bool:
    """[start, end) in local time; a window whose end is before its start wraps midnight."""
    now = now.replace(tzinfo=None)
    if start < end:
        return start <= now < end
    return now >= start or now < end


def condition_holds(when: Condition, snapshot: Snapshot, local_time: dt.time) -> bool:
    """Every given condition must hold; one on an absent sensor (None) never holds."""

    def above(value: float | None, threshold: float | None) -> bool:
        return threshold is None or (value is not None and value > threshold)

    if when.battery_below is not None and (
        snapshot.battery_percent is None or not snapshot.battery_percent < when.battery_below
    ):
        return False
    if when.on_battery is not None and (snapshot.on_ac is None or snapshot.on_ac == when.on_battery):
        return False
    if not above(snapshot.temperature_c, when.temperature_above):
        return False
    if not above(snapshot.cpu_percent, when.cpu_above):
        return False
    if not above(snapshot.load_avg_1m, when.load_above):
        return False
    if when.time_between is not None:
        start, end = (_time_of(t) for t in when.time_between)
        if not _in_window(local_time, start, end):
            return False
    return True


def resolve(policy: Policy, snapshot: Snapshot, local_time: dt.time) -> Constraints:
    """Apply every matching rule, in file order, to the policy's base SLO and allowed set.

    Combination: allowed variants intersect; the smallest `max_budget` caps the budgets (if no
    allowed budget is under the cap, the smallest allowed one stays, so the set is never
    empty); the smallest `slo_ms` set replaces the SLO, then every `slo_scale` multiplies it;
    `prefer` comes from the first matching rule that has one. If two rules' variant lists do
    not overlap, the later rule's list wins (a rule is an exception to what came before; an
    empty set would leave the controller nothing to run) and a note says so.
    """
    matched = [rule for rule in policy.rules if condition_holds(rule.when, snapshot, local_time)]
    notes: list[str] = []

    variants: frozenset[str] | None = frozenset(policy.allowed.variants) if policy.allowed.variants else None
    for rule in matched:
        if rule.then.allow_variants is None:
            continue
        own = frozenset(rule.then.allow_variants)
        both = own if variants is None else variants & own
        if not both:
            notes.append(f"rule {rule.name!r} allows none of {sorted(variants or ())}; using its own list")
            both = own
        variants = both

    base = tuple(policy.allowed.budgets)  # validated: unique, largest first, non-empty
    caps = [rule.then.max_budget for rule in matched if rule.then.max_budget is not None]
    budgets = base
    if caps:
        cap = min(caps)
        budgets = tuple(b for b in base if b <= cap + 1e-9) or (base[-1],)
        if budgets == (base[-1],) and base[-1] > cap + 1e-9:
            notes.append(f"no allowed budget is <= {cap:g}; keeping the smallest, {base[-1]:g}")

    set_ms = [rule.then.slo_ms for rule in matched if rule.then.slo_ms is not None]
    slo_ms = min(set_ms) if set_ms else policy.slo.latency_ms
    for rule in matched:
        if rule.then.slo_scale is not None:
            slo_ms *= rule.then.slo_scale

    prefer = next((rule.then.prefer for rule in matched if rule.then.prefer is not None), None)
    return Constraints(
        slo_ms=slo_ms,
        percentile=policy.slo.percentile,
        window_s=policy.slo.window_s,
        headroom=policy.slo.headroom,
        dwell_s=policy.hysteresis.dwell_s,
        min_switch_interval_s=policy.hysteresis.min_switch_interval_s,
        variants=variants,
        budgets=budgets,
        prefer=prefer,
        rules=tuple(rule.name for rule in matched),
        notes=tuple(notes),
    )
