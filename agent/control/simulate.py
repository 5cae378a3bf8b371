"""Replay a recorded trace through the controller (`edge-agent policy simulate`).

The trace gives, per step, the telemetry and the latency observed on the configuration that
was in force when it was recorded. That observation feeds the controller's latency model as
the daemon's window would (whatever configuration the simulation has in force), and every
step goes through `controller.decide`, the function the daemon runs. The latency shown for a
step is the decision's own prediction for the configuration in force after it: the figure its
reason quotes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from agent.control.controller import ControllerState, Decision, Observed, Option, Served, decide
from agent.policy.schema import Policy
from agent.telemetry.formats import TraceEntry
from agent.values import Config

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Requests a recorded percentile is taken to be over (the trace does not say).
RECORDED_COUNT = 30


@dataclass(frozen=True)
class Step:
    t: float  # seconds since the trace's start
    entry: TraceEntry
    decision: Decision
    config: Config  # in force after this step
    latency_ms: float | None  # predicted latency percentile of the configuration in force
    met: bool | None


def recorded(entry: TraceEntry, by_config: dict[Config, Option], percentile: float) -> Served | None:
    """The trace's observation at the policy's percentile, if it names a known configuration."""
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
    return Served(config, float(value), None, RECORDED_COUNT) if config in by_config else None


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
    seen = False
    for entry in entries:
        now = entry.snapshot.time - start
        served = recorded(entry, by_config, policy.slo.percentile)
        seen = seen or served is not None
        observed = Observed(state.config, None, 0)
        if served is not None:
            own = served.config == state.config
            observed = Observed(
                state.config, served.percentile_ms if own else None, served.count if own else 0, served=(served,)
            )
        local = dt.datetime.fromtimestamp(entry.snapshot.time, tz=local_tz).time()
        decision, state = decide(policy, entry.snapshot, observed, options, state, now, local)
        latency = decision.predicted_ms if seen else None
        met = None if latency is None else latency <= decision.slo_ms
        steps.append(Step(now, entry, decision, decision.config, latency, met))
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


def plot(steps: list[Step], out: Path, title: str, accuracy: dict[Config, float] | None = None) -> None:
    """Write `timeline_figure` as a PNG."""
    timeline_figure(steps, title, accuracy).savefig(out, dpi=100)


def timeline_figure(steps: list[Step], title: str, accuracy: dict[Config, float] | None = None) -> Figure:
    """The run as a timeline: telemetry, predicted latency vs SLO, configuration in force (the
    axis in order of accuracy, most accurate at the top, when `accuracy` is given). Legends
    sit right of their axes, so none covers a line."""
    from matplotlib.figure import Figure

    t = [s.t for s in steps]
    fig = Figure(figsize=(12, 8), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True, height_ratios=[1, 1.2, 1])
    outside = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0, "fontsize": 8}
    ax = axes[0]
    ax.plot(t, [s.entry.snapshot.cpu_percent for s in steps], label="CPU %")
    ax.plot(t, [s.entry.snapshot.temperature_c for s in steps], label="temperature C")
    ax.plot(t, [s.entry.snapshot.battery_percent for s in steps], label="battery %")
    ax.set_ylabel("telemetry")
    ax.legend(**outside)
    ax.grid(alpha=0.3)
    ax = axes[1]
    ax.plot(t, [s.latency_ms for s in steps], label="predicted latency of\nthe configuration in force")
    ax.plot(t, [s.decision.slo_ms for s in steps], "r--", label="SLO")
    ax.plot(t, [s.decision.slo_ms * s.decision.headroom for s in steps], "r:", lw=1, label="headroom x SLO")
    ax.set_ylabel(f"p{steps[0].decision.percentile:g} ms" if steps else "ms")
    ax.legend(**outside)
    ax.grid(alpha=0.3)
    ax = axes[2]
    acc = accuracy or {}
    configs = sorted({s.config for s in steps}, key=lambda c: (acc.get(c, 0.0), -c.budget, c.variant))
    names = [f"{c} ({acc[c]:.1%})" if c in acc else str(c) for c in configs]
    ax.step(t, [configs.index(s.config) for s in steps], where="post")
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_ylabel("configuration")
    ax.set_xlabel("seconds")
    ax.grid(alpha=0.3)
    fig.suptitle(title)
    return fig
