"""The adaptive loop: telemetry + policy + observed latency -> controller -> runner.switch.

Owns the policy in force (with last-good reload), the telemetry source and the controller's
state; the daemon registers its methods as scheduler jobs. All decisions go through the pure
`controller.decide`, the same function `policy simulate` replays. Variants that are out of
service or unhealthy (`agent.serving.health`) are left out of the controller's choice.
"""

from __future__ import annotations

import datetime as dt
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import structlog

from agent.control.controller import (
    ControllerState,
    Decision,
    Observed,
    Option,
    Served,
    decide,
    options_from_manifest,
)
from agent.errors import ZooError
from agent.paths import DEVICE_PROFILE_NAME, SITE_ACCURACY_NAME, default_policy_path
from agent.paths import state_dir as default_state_dir
from agent.policy.store import PolicyStore, ReloadResult
from agent.serving.health import OUT_OF_SERVICE, HealthCollector, Unavailable
from agent.serving.metrics import Metrics
from agent.serving.runner import Runner
from agent.telemetry.snapshot import Snapshot
from agent.telemetry.sources import TelemetrySource
from agent.trust import SignatureError, TrustedKeys, signature_path
from agent.values import Config
from agent.zoo.accuracy_tables import AccuracyTable, select_table
from agent.zoo.manifest import latency_table, load_device_profile
from agent.zoo.sessions import recheck_files

log = structlog.get_logger(__name__)


class AdaptiveLoop:
    def __init__(
        self,
        runner: Runner,
        telemetry: TelemetrySource,
        policy_path: Path | None,
        metrics: Metrics,
        ort_threads: int,
        state_dir: Path | None = None,
        trust: TrustedKeys | None = None,
    ) -> None:
        self.runner = runner
        self.telemetry = telemetry
        self.metrics = metrics
        self.ort_threads = ort_threads
        # A policy naming a variant this zoo lacks is invalid, at start and at reload alike; with
        # trusted keys, so is one without a valid signature beside it.
        path = policy_path or default_policy_path()
        self.store = PolicyStore(
            path,
            on_failure=[self._policy_failed],
            clock=runner.clock.wall,
            known_variants=[v.name for v in runner.zoo.manifest.variants],
            check=trust.check if trust else None,
            watch_also=[signature_path(path)] if trust else (),
        )
        self.snapshot = Snapshot(time=runner.clock.wall())
        self.state = ControllerState(config=runner.current, last_switch_at=time.monotonic())
        self.last: Decision | None = None
        self.decisions: deque[dict[str, Any]] = deque(maxlen=20)
        self.state_dir = state_dir or default_state_dir()
        self._profile_source = "manifest"
        self._site_stamp = self._site_file_stamp()
        self.accuracy: AccuracyTable
        self.options = self._options()
        self.on_decision: list[Callable[[Decision], None]] = []
        metrics.registry.register(HealthCollector(runner.health, runner.zoo.variants))
        # Read at scrape time, so it cannot disagree with status's policy.last_error.
        metrics.policy_refused.set_function(lambda: float(self.store.last_error is not None))

    def _options(self) -> list[Option]:
        """The configurations to choose from, timed by this device's profile where there is one
        and ranked by the accuracy table the policy names."""
        zoo = self.runner.zoo
        path = self.state_dir / DEVICE_PROFILE_NAME
        try:
            device = load_device_profile(path)
        except ZooError as exc:
            log.warning("device_profile_invalid", error=exc.message)
            device = None
        self._profile_source = str(path) if device is not None else "manifest"
        table = latency_table(zoo.manifest, device)
        policy = self.store.policy
        self.accuracy = select_table(zoo.manifest, policy.accuracy, self.state_dir)
        if self.accuracy.note:
            log.warning("accuracy_table_fallback", wanted=policy.accuracy, note=self.accuracy.note)
        self.metrics.accuracy_table.state(self.accuracy.name)
        return options_from_manifest(
            zoo.manifest,
            table,
            set(zoo.variants),
            self.ort_threads,
            policy.slo.percentile,
            self.accuracy.estimates,
            self.accuracy.name,
        )

    def missing_profile(self) -> str | None:
        """Why the controller cannot work on this zoo, or None: with no latency profile for any
        configuration it has nothing to predict with, which matters only when the policy leaves
        more than one configuration to choose from."""
        if self.options:
            return None
        zoo, allowed = self.runner.zoo, self.store.policy.allowed
        names = [n for n in zoo.variants if allowed.variants is None or n in allowed.variants]
        choices = [
            (n, b)
            for n in names
            for b in zoo.variants[n].spec.budgets
            if any(abs(b - a) < 1e-9 for a in allowed.budgets)
        ]
        if len(choices) <= 1:
            return None
        return (
            f"no latency profile for the zoo at {zoo.directory} and the policy leaves {len(choices)} configurations "
            f"to choose from: run `edge-agent zoo profile --zoo {zoo.directory}` (it writes "
            f"{self.state_dir / DEVICE_PROFILE_NAME}, which the daemon reads), or allow one configuration"
        )

    def _site_file_stamp(self) -> tuple[int, int] | None:
        try:
            st = (self.state_dir / SITE_ACCURACY_NAME).stat()
        except OSError:
            return None
        return (st.st_mtime_ns, st.st_size)

    def _policy_failed(self, message: str, code: str) -> None:
        reason = "signature" if code == SignatureError.code else "invalid"
        self.metrics.policy_reload_failures.labels(reason=reason).inc()

    # -- jobs ------------------------------------------------------------------------------------

    def sample_telemetry(self) -> None:
        self.snapshot = self.telemetry.read(self.runner.clock.wall())  # the wall clock: rules read its time of day
        self.metrics.set_telemetry(self.snapshot)

    def watch_policy(self) -> None:
        """The policy file and the site accuracy table: either changed on disk is picked up live."""
        if self.store.changed_on_disk():
            self.reload_policy("file changed")
        stamp = self._site_file_stamp()
        if stamp != self._site_stamp:
            self._site_stamp = stamp
            self.options = self._options()
            log.info("accuracy_table_in_force", **self.accuracy.as_dict())

    def reload_policy(self, why: str) -> ReloadResult:
        result = self.store.reload()
        if result.ok:
            self.options = self._options()
            log.info(
                "policy_in_force", why=why, path=self.store.source, changed=result.changed, accuracy=self.accuracy.name
            )
        return result

    def recheck_zoo(self) -> dict[str, str]:
        """Hash every variant's file again and apply what was found (`apply_recheck`)."""
        return self.apply_recheck(recheck_files(self.runner.zoo))

    def apply_recheck(self, files: dict[str, str | None]) -> dict[str, str]:
        """On reload, with each variant's file checked again (None: it matches the manifest): one
        that changed or vanished goes out of service (the configuration moves off it at once),
        one found restored comes back. Returns the variants out of service and why.

        The configuration moves off a bad variant *before* it is retired: until then its session
        in memory (loaded from the verified file) serves, so a request that names no variant
        never meets the moment when the configuration in force is out of service."""
        bad = {name: problem for name, problem in files.items() if problem is not None}
        current = self.runner.current.variant
        if current in bad:
            self._leave(current, bad)
        for name, problem in files.items():
            if problem is None:
                self.runner.restore(name)
            else:
                self.runner.retire(name, problem)
        return self.runner.health.retired()

    def _leave(self, variant: str, bad: dict[str, str]) -> None:
        """Move off `variant` (its file went bad): a pin on it is lifted, then the controller's
        choice among the rest, else any variant in service and not in `bad`."""
        pin = self.runner.pin_state
        if pin is not None and pin.config.variant in bad:
            self.runner.unpin(f"pinned variant {pin.config.variant} is out of service")
        self.tick(leaving=bad)
        if self.runner.current.variant != variant:
            return
        spare = next(
            (n for n in self.runner.zoo.variants if n not in bad and self.runner.health.out_of_service(n) is None), None
        )
        if spare is None:
            log.error("no_variant_in_service", retired=variant)  # every request is refused with 503 now
            return
        self.runner.switch(Config(spare, 1.0), f"{variant} is out of service; {spare} is the only variant left")

    def _choices(self, unavailable: dict[str, Unavailable]) -> list[Option]:
        """The options the controller may pick: never an out-of-service variant; an unhealthy one
        only if nothing else is left (a failing model beats none)."""
        retired = {name for name, u in unavailable.items() if u.state == OUT_OF_SERVICE}
        usable = [o for o in self.options if o.config.variant not in retired]
        return [o for o in usable if o.config.variant not in unavailable] or usable

    def _decode_ms(self, now: float, span_s: float) -> float:
        """Median decode + resize time of the window's requests, any configuration (0 with none)."""
        median, _ = self.runner.decode_window.percentile(now, 50, span_s)
        return median or 0.0

    def _served(self, now: float, percentile: float, span_s: float) -> tuple[Served, ...]:
        """Every configuration in the window: its whole-request and model-only percentiles."""
        whole = self.runner.window.by_config(now, percentile, span_s)
        model = self.runner.model_window.by_config(now, percentile, span_s)
        return tuple(
            Served(config, p, model[config][0] if config in model else None, count)
            for config, (p, count) in sorted(whole.items())
        )

    def tick(self, leaving: dict[str, str] | None = None) -> Decision | None:
        """One controller step; switches the runner when the controller says so. `leaving`: the
        variants about to go out of service, and why (they are left out already)."""
        now = time.monotonic()
        unavailable = self.runner.health.unavailable(now)
        unavailable.update({n: Unavailable(OUT_OF_SERVICE, why) for n, why in (leaving or {}).items()})
        options = self._choices(unavailable)
        if not options:
            return None
        policy = self.store.policy
        current = self.runner.current
        if self.state.config != current:  # a pin or an admin switch moved it: follow the truth
            self.state = ControllerState(config=current, latency=self.state.latency, last_switch_at=now)
        served = self._served(now, policy.slo.percentile, policy.slo.window_s)
        own = next((s for s in served if s.config == current), None)
        p, count = (own.percentile_ms, own.count) if own is not None else (None, 0)
        local = dt.datetime.fromtimestamp(self.snapshot.time).time()  # the gateway's time zone, for time_between rules
        decision, self.state = decide(
            policy,
            self.snapshot,
            Observed(current, p, count, self._decode_ms(now, policy.slo.window_s), served),
            options,
            self.state,
            now,
            local,
        )
        away = unavailable.get(current.variant)
        if decision.switch and away is not None and decision.config.variant != current.variant:
            decision = replace(
                decision,
                reason=f"{current.variant} is {away.state.replace('_', ' ')} ({away.reason}); {decision.reason}",
            )
        self.last = decision
        self.metrics.slowdown.set(decision.slowdown)
        self.metrics.overhead.set(decision.overhead_ms / 1000)
        self.metrics.decode_term.set(decision.decode_ms / 1000)
        self.metrics.slo_ms.set(decision.slo_ms)
        self.metrics.slo_target.set(decision.percentile / 100)
        self.metrics.last_decision.set(time.time())
        attainment = self.runner.window.attainment(now, decision.slo_ms, policy.slo.window_s)
        if attainment is not None:
            self.metrics.attainment.set(attainment)
        if decision.switch:
            applied = self.runner.switch(decision.config, decision.reason)
            if not applied and self.runner.pin_state is not None:
                self.state = ControllerState(config=self.runner.current, latency=self.state.latency, last_switch_at=now)
            self.decisions.append(
                {
                    "at": self.runner.clock.wall(),
                    "config": str(decision.config),
                    "applied": applied,
                    "reason": decision.reason,
                }
            )
            for callback in self.on_decision:
                callback(decision)
        return decision

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        policy = self.store.policy
        d = self.last
        slo_ms = d.slo_ms if d else policy.slo.latency_ms
        observed, count = self.runner.window.percentile(now, policy.slo.percentile, policy.slo.window_s)
        attainment = self.runner.window.attainment(now, slo_ms, policy.slo.window_s)
        return {
            "slo": {
                "percentile": d.percentile if d else policy.slo.percentile,
                "latency_ms": slo_ms,
                "headroom": d.headroom if d else policy.slo.headroom,
                "window_s": policy.slo.window_s,
                "observed_ms": None if observed is None else round(observed, 3),
                "requests": count,
                "attainment": None if attainment is None else round(attainment, 4),
                "rules": list(d.rules) if d else [],
            },
            "controller": {
                "slowdown": round(d.slowdown, 3) if d else None,
                "overhead_ms": round(d.overhead_ms, 3) if d else None,
                "decode_ms": round(d.decode_ms, 3) if d else None,
                "predicted_ms": round(d.predicted_ms, 3) if d else None,
                "feasible": d.feasible if d else None,
                "last_reason": d.reason if d else None,
                "profile": self._profile_source,
                "accuracy": self.accuracy.as_dict(),
                "decisions": list(self.decisions),
            },
            "policy": self.store.status(),
            "telemetry": self.snapshot.as_dict(),
            "unavailable_variants": {n: u.as_dict(now) for n, u in self.runner.health.unavailable(now).items()},
        }
