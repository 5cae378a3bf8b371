"""The operator policy: which rules hold right now (`resolve`) and the policy in force (`PolicyStore`).

The schema lives in `agent.policy_schema`, safe reading and error messages in
`agent.policy_loader`; this module re-exports what the controller and the daemon use.
`resolve` is pure (local time is an argument) so the daemon, `policy simulate` and the tests
get the same answer for the same inputs.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog

from agent.policy.loader import (
    MAX_BYTES,
    MAX_DEPTH,
    FileIdentity,
    PolicyError,
    load_policy,
    parse_policy,
    read_policy_file,
)
from agent.policy.schema import (
    DEFAULT_BUDGETS,
    FALLBACK_POLICY,
    SUPPORTED_VERSIONS,
    Action,
    Allowed,
    Condition,
    Hysteresis,
    Policy,
    Rule,
    Slo,
)
from agent.telemetry.snapshot import Snapshot

log = structlog.get_logger("agent.policy")

__all__ = [
    "DEFAULT_BUDGETS",
    "FALLBACK_POLICY",
    "MAX_BYTES",
    "MAX_DEPTH",
    "SUPPORTED_VERSIONS",
    "Action",
    "Allowed",
    "Condition",
    "Constraints",
    "Hysteresis",
    "Policy",
    "PolicyError",
    "PolicyStore",
    "ReloadResult",
    "Rule",
    "Slo",
    "condition_holds",
    "default_policy_path",
    "load_policy",
    "parse_policy",
    "policy_warnings",
    "resolve",
]


def default_policy_path() -> Path:
    """The shipped `policies/default.yaml` (next to the `agent` package: checkout or editable install)."""
    return Path(__file__).resolve().parents[2] / "policies" / "default.yaml"


# -- resolve: policy x device state -> constraints for the controller --------------------------------


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


# -- the policy in force ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReloadResult:
    ok: bool
    changed: bool
    error: str | None = None


def _identity(path: Path) -> FileIdentity | None:
    try:
        return FileIdentity.of(os.stat(path))
    except OSError:
        return None


class PolicyStore:
    """Holds the last good policy. A reload validates the whole file and swaps only on
    success; a broken edit is logged, counted and reported, and the old policy stays in force.

    The constructor loads `path` once (when given); if that fails, `default` is in force and
    `last_error` says why, so the daemon decides whether to start anyway.
    """

    def __init__(
        self,
        path: Path | None,
        default: Policy = FALLBACK_POLICY,
        on_failure: Iterable[Callable[[str], None]] = (),
    ) -> None:
        self.path = path
        self.policy = default
        self.loaded_at: float | None = None
        self.digest: str | None = None
        self.last_error: str | None = None
        self.failures = 0
        self.on_failure: list[Callable[[str], None]] = list(on_failure)
        self._seen: FileIdentity | None = None
        self._lock = threading.Lock()
        if path is not None:
            self.reload()

    @property
    def source(self) -> str:
        """Where the policy in force came from (for status)."""
        return str(self.path) if self.loaded_at is not None else "built-in default"

    def changed_on_disk(self) -> bool:
        """Cheap check for the 1 Hz file-watch job: has the file changed since the last reload
        attempt? A deleted or unreadable file is a change (once), so the reload reports it."""
        if self.path is None:
            return False
        return _identity(self.path) != self._seen

    def reload(self) -> ReloadResult:
        """Re-read and validate the file; swap the policy only if the whole file is valid."""
        if self.path is None:
            return ReloadResult(ok=True, changed=False)
        with self._lock:
            # Stat before reading: if the file changes in between, the next check sees a change
            # and reloads again, rather than never reloading the newer content.
            before = _identity(self.path)
            try:
                policy, identity = read_policy_file(self.path)
            except PolicyError as exc:
                self._seen = before
                return self._failed(exc.message)
            self._seen = identity
            changed = policy != self.policy
            self.policy = policy
            self.loaded_at = time.time()
            self.digest = hashlib.sha256(policy.model_dump_json().encode()).hexdigest()[:12]
            self.last_error = None
            log.info(
                "policy_loaded",
                path=str(self.path),
                changed=changed,
                rules=[r.name for r in policy.rules],
                digest=self.digest,
            )
            return ReloadResult(ok=True, changed=changed)

    def _failed(self, message: str) -> ReloadResult:
        self.failures += 1
        self.last_error = message
        log.error("policy_reload_failed", path=str(self.path), error=message, failures=self.failures, kept=self.source)
        for callback in self.on_failure:
            try:
                callback(message)
            except Exception:  # a metrics hook must not break the reload path
                log.exception("policy_failure_callback_failed")
        return ReloadResult(ok=False, changed=False, error=message)

    def status(self) -> dict[str, Any]:
        """For `GET /v1/status`: the policy in force, where from, and the last refused edit."""
        return {
            "path": str(self.path) if self.path else None,
            "source": self.source,
            "version": self.policy.version,
            "digest": self.digest,
            "loaded_at": self.loaded_at,
            "rules": [rule.name for rule in self.policy.rules],
            "last_error": self.last_error,
            "failures": self.failures,
        }


def policy_warnings(policy: Policy, known_variants: Iterable[str] | None = None) -> list[str]:
    """Legal but probably unintended: names not in the zoo, budgets the zoo is not profiled
    for, a rule whose variants can never meet the base allow list. Not errors: a policy may be
    written for a zoo other than the one at hand."""
    warnings = []
    if known_variants is not None:
        known = set(known_variants)
        for name in sorted(policy.variant_names() - known):
            warnings.append(f"variant {name!r} is not in the zoo ({', '.join(sorted(known))})")
    for budget in policy.allowed.budgets:
        if not any(abs(budget - b) < 1e-9 for b in DEFAULT_BUDGETS):
            warnings.append(
                f"budget {budget:g} is not one the zoo is profiled for ({', '.join(f'{b:g}' for b in DEFAULT_BUDGETS)})"
            )
    base = set(policy.allowed.variants) if policy.allowed.variants else None
    for rule in policy.rules:
        own = set(rule.then.allow_variants or ())
        if base is not None and own and not own & base:
            warnings.append(
                f"rule {rule.name!r}: allow_variants shares nothing with allowed.variants; it replaces them"
            )
        if rule.then.prefer and own and rule.then.prefer not in own:
            warnings.append(f"rule {rule.name!r}: prefers {rule.then.prefer!r}, which its allow_variants excludes")
    return warnings
