"""Replay a recorded trace through the controller (`edge-agent policy simulate`).

The trace gives, per step, the telemetry and the latency observed on the configuration that
was in force when it was recorded. Their ratio to that configuration's profiled latency is
the device's slowdown at that moment; the simulated configuration is predicted to take its
own profiled latency times that slowdown. Every step goes through `controller.decide`, the
function the daemon runs.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from agent.control.controller import ControllerState, Decision, Observed, Option, decide
from agent.policy.schema import Policy
from agent.telemetry.formats import TraceEntry
from agent.values import Config


@dataclass(frozen=True)
class Step:
    t: float  # seconds since the trace's start
    entry: TraceEntry
    decision: Decision
    config: Config  # in force after this step
    latency_ms: float | None  # predicted latency percentile of the configuration in force
    met: bool | None


def device_slowdown(entry: TraceEntry, by_config: dict[Config, Option], percentile: float) -> float | None:
    obs = entry.observed or {}
    key = "p95_ms" if percentile >= 75 else "p50_ms"
    if percentile >= 99 and obs.get("p99_ms"):
        key = "p99_ms"
    value, text = obs.get(key), obs.get("config")
    if not value or not text:
        return None
    try:
        config = Config.parse(str(text))
    except Exception:
        return None
    option = by_config.get(config)
    return float(value) / option.profiled_ms if option else None


def simulate(
    policy: Policy, entries: list[TraceEntry], options: list[Option], local_tz: dt.tzinfo | None = None
) -> list[Step]:
    """Run the controller over every trace entry, as the daemon would have."""
    if not entries or not options:
        return []
    by_config = {o.config: o for o in options}
    state = ControllerState()
    start = entries[0].snapshot.time
    steps: list[Step] = []
    slowdown = 1.0
    for entry in entries:
        now = entry.snapshot.time - start
        measured = device_slowdown(entry, by_config, policy.slo.percentile)
        if measured is not None:
            slowdown = measured
        current = state.config
        observed = Observed(None, None, 0)
        if current is not None and measured is not None:
            observed = Observed(current, by_config[current].profiled_ms * slowdown, 100)
        local = dt.datetime.fromtimestamp(entry.snapshot.time, tz=local_tz).time()
        decision, state = decide(policy, entry.snapshot, observed, options, state, now, local)
        in_force = state.config or decision.config
        latency = by_config[in_force].profiled_ms * slowdown if measured is not None else None
        met = None if latency is None else latency <= decision.slo_ms
        steps.append(Step(now, entry, decision, in_force, latency, met))
    return steps


def summary(steps: list[Step]) -> dict[str, float | int | None]:
    judged = [s for s in steps if s.met is not None]
    switches = sum(1 for s in steps if s.decision.switch)
    return {
        "steps": len(steps),
        "switches": switches,
        "predicted_attainment": (sum(1 for s in judged if s.met) / len(judged)) if judged else None,
        "duration_s": steps[-1].t if steps else 0.0,
    }


def plot(steps: list[Step], out: Path, title: str) -> None:
    """A PNG timeline: telemetry, predicted latency vs SLO, configuration in force."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s.t for s in steps]
    fig, axes = plt.subplots(3, 1, figsize=(12, 8), sharex=True, height_ratios=[1, 1.2, 1])
    ax = axes[0]
    ax.plot(t, [s.entry.snapshot.cpu_percent for s in steps], label="CPU %")
    ax.plot(t, [s.entry.snapshot.temperature_c for s in steps], label="temperature C")
    ax.plot(t, [s.entry.snapshot.battery_percent for s in steps], label="battery %")
    ax.set_ylabel("telemetry")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(t, [s.latency_ms for s in steps], label="predicted latency of the configuration in force")
    ax.plot(t, [s.decision.slo_ms for s in steps], "r--", label="SLO")
    ax.plot(t, [s.decision.slo_ms * s.decision.headroom for s in steps], "r:", lw=1, label="headroom x SLO")
    ax.set_ylabel(f"p{steps[0].decision.percentile:g} ms" if steps else "ms")
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax = axes[2]
    names = sorted({str(s.config) for s in steps}, key=lambda n: (n.split("@")[0], -float(n.split("@")[1])))
    ax.step(t, [names.index(str(s.config)) for s in steps], where="post")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("configuration")
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
