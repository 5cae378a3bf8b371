"""`edge-agent demo`: the daemon on the shipped zoo and default policy, a short contention
schedule against it, and a live view of what it decides and why."""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table

from agent.cli.launch import running_daemon
from agent.cli.scenario import (
    Record,
    default_schedule,
    injected_telemetry_env,
    labelled_pngs,
    reaction_times,
    run_schedule,
    summarize,
)
from agent.client import Client
from agent.paths import default_policy_path
from agent.policy.loader import load_policy

console = Console()


def _view(phase: str, elapsed: float, status: dict[str, Any], records: list[Record], slo_ms: float) -> Group:
    cfg, slo, tele = status.get("config", {}), status.get("slo", {}), status.get("telemetry", {})
    top = Table.grid(padding=(0, 2))
    top.add_column(style="bold")
    top.add_column()
    top.add_row("phase", f"{phase}  ({elapsed:.0f} s)")
    top.add_row(
        "telemetry",
        f"CPU {tele.get('cpu_percent') or 0:.0f}%  load {tele.get('load_avg_1m') or 0:.2f}  "
        f"temperature {tele.get('temperature_c') or '-'} C  battery {tele.get('battery_percent') or '-'}%  "
        f"on AC {tele.get('on_ac')}",
    )
    top.add_row("configuration", f"[cyan]{cfg.get('current')}[/cyan]")
    top.add_row("why", str(cfg.get("reason", ""))[:160])
    observed = slo.get("observed_ms")
    colour = "green" if observed is not None and observed <= slo_ms else "red"
    top.add_row(
        f"p{slo.get('percentile', 95):g} vs SLO",
        f"[{colour}]{observed if observed is not None else '-'} ms[/{colour}] / {slo.get('latency_ms')} ms",
    )
    done = [r for r in records]
    if done:
        met = sum(1 for r in done if r.latency_ms <= slo_ms) / len(done)
        answered = [r for r in done if r.status == 200]
        acc = sum(r.correct for r in answered) / len(answered) if answered else 0
        top.add_row("so far", f"{len(done)} requests, attainment {met:.1%}, served accuracy {acc:.1%}")
    decisions = Table(title="recent decisions", expand=True)
    for col in ("time", "to", "reason"):
        decisions.add_column(col, overflow="fold")
    for d in status.get("decisions", [])[-5:]:
        decisions.add_row(time.strftime("%H:%M:%S", time.localtime(d["at"])), d["new"], d["reason"][:120])
    return Group(Panel(top, title="edge-agent demo"), decisions)


def demo(
    phase_s: Annotated[float, typer.Option(help="Seconds per phase")] = 6.0,
    rate: Annotated[float, typer.Option(help="Requests per second")] = 30.0,
    out: Annotated[Path, typer.Option(help="Where to write the timeline PNG")] = Path("demo-timeline.png"),
    record_trace: Annotated[
        Path | None, typer.Option(help="Also record the daemon's telemetry and latency as a trace (JSONL)")
    ] = None,
    compare: Annotated[
        list[str] | None,
        typer.Option(
            help="Also run the schedule with this configuration pinned (repeatable; default full@1), "
            "to compare with what a user without edge-agent would get"
        ),
    ] = None,
) -> None:
    """Start the daemon, run a short contention schedule against it, show its decisions live,
    then run it again with configurations pinned and compare."""
    schedule = default_schedule()
    policy = default_policy_path()
    slo_ms = load_policy(policy).slo.latency_ms
    pins = compare if compare is not None else ["full@1"]
    console.print(f"starting the daemon on the shipped zoo with {policy.name}; {len(schedule)} phases of {phase_s:g} s")
    images = labelled_pngs(200)
    records = _drive(None, schedule, phase_s, rate, images, policy, slo_ms, record_trace)
    summary = summarize(records, slo_ms, len(schedule))
    reactions = reaction_times(records, slo_ms, phase_s, len(schedule))
    table = Table(title=f"summary (SLO p95 <= {slo_ms:g} ms)")
    for col in ("phase", "requests", "attainment", "p95 ms", "accuracy", "configurations", "reaction s"):
        table.add_column(col)
    for i, ph in enumerate(summary["phases"]):
        if not ph["requests"]:
            continue
        table.add_row(
            schedule[i].name,
            str(ph["requests"]),
            f"{ph['attainment']:.1%}",
            str(ph["p95_ms"]),
            f"{ph['accuracy']:.1%}" if ph["accuracy"] is not None else "-",
            ", ".join(ph["configs"]),
            str(reactions[i]),
        )
    o = summary["overall"]
    table.add_row(
        "all",
        str(o["requests"]),
        f"{o['attainment']:.1%}",
        str(o["p95_ms"]),
        f"{o['accuracy']:.1%}" if o["accuracy"] is not None else "-",
        "",
        "",
    )
    console.print(table)
    _plot(records, schedule, phase_s, slo_ms, out)
    console.print(f"timeline: {out.resolve()}")
    if pins:
        runs = {"edge-agent": records}
        for pin in pins:
            console.print(f"the same schedule with {pin} pinned ...")
            runs[f"pinned {pin}"] = _drive(pin, schedule, phase_s, rate, images, policy, slo_ms, None)
        console.print(_comparison(runs, schedule, slo_ms))


def _comparison(runs: dict[str, list[Record]], schedule: list[Any], slo_ms: float) -> Table:
    """Attainment and served accuracy side by side, the load phases (no rule applies) apart
    from those where the policy's rules choose cheaper configurations on purpose."""
    ruled = {i for i, p in enumerate(schedule) if p.telemetry}
    table = Table(title="edge-agent vs pinned configurations, same schedule, same requests")
    for col in ("run", "attainment", "accuracy, load phases", "accuracy, battery + heat", "accuracy"):
        table.add_column(col)

    def acc(recs: list[Record]) -> str:
        answered = [r for r in recs if r.status == 200]
        return f"{sum(r.correct for r in answered) / len(answered):.1%}" if answered else "-"

    for name, recs in runs.items():
        met = sum(1 for r in recs if r.latency_ms <= slo_ms) / len(recs) if recs else 0.0
        table.add_row(
            name,
            f"{met:.1%}",
            acc([r for r in recs if r.phase not in ruled]),
            acc([r for r in recs if r.phase in ruled]),
            acc(recs),
        )
    return table


def _drive(
    pin: str | None,
    schedule: list[Any],
    phase_s: float,
    rate: float,
    images: list[tuple[bytes, str]],
    policy: Path,
    slo_ms: float,
    record_trace: Path | None,
) -> list[Record]:
    """One run of the schedule against a fresh daemon; live view for the adaptive run."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        override = Path(tmp) / "telemetry.json"
        override.write_text("{}")
        env = {**injected_telemetry_env(override), "EDGE_AGENT_CONTROLLER_INTERVAL_S": "0.25"}
        with running_daemon(env=env, args=["--policy", str(policy)]) as (_, sock), Client(sock) as client:
            if pin is not None:
                client.pin(pin, 86400, "demo comparison")
                return run_schedule(sock, override, schedule, phase_s, rate, images)
            with Live(console=console, refresh_per_second=4) as live:
                trace = record_trace.open("w", encoding="utf-8") if record_trace else None

                def tick(index: int, elapsed: float, records: list[Record]) -> None:
                    try:
                        status = client.status()
                    except Exception:  # the view must not stop the demo
                        status = {}
                    live.update(_view(schedule[index].name, elapsed, status, records, slo_ms))
                    if trace is not None and status:
                        trace.write(_trace_line(status) + "\n")

                try:
                    return run_schedule(sock, override, schedule, phase_s, rate, images, on_tick=tick)
                finally:
                    if trace is not None:
                        trace.close()


def _trace_line(status: dict[str, Any]) -> str:
    """The daemon's own view (telemetry with injections, latency over the policy window)."""
    from agent.telemetry.formats import trace_line
    from agent.telemetry.snapshot import Snapshot

    slo = status["slo"]
    observed = {
        "config": status["config"]["current"],
        "p95_ms": slo.get("observed_ms"),
        "count": slo.get("requests", 0),
    }
    return trace_line(Snapshot.from_dict(status["telemetry"]), observed if slo.get("observed_ms") else None)


def _plot(records: list[Record], schedule: list[Any], phase_s: float, slo_ms: float, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(12, 4.5))
    for k, cfg in enumerate(sorted({r.config for r in records})):
        xs = [r.sent for r in records if r.config == cfg]
        ys = [min(r.latency_ms, 4 * slo_ms) for r in records if r.config == cfg]
        ax.scatter(xs, ys, s=5, color=f"C{k}", label=cfg)
    ax.axhline(slo_ms, color="r", ls="--", label="SLO")
    for i, p in enumerate(schedule):
        if i % 2:
            ax.axvspan(i * phase_s, (i + 1) * phase_s, color="0.92", zorder=0)
        ax.text(i * phase_s + 0.2, 3.7 * slo_ms, p.name, fontsize=8)
    ax.set_ylim(0, 4 * slo_ms)
    ax.set_xlabel("seconds")
    ax.set_ylabel("latency ms")
    ax.legend(fontsize=7, markerscale=3, loc="upper right", ncol=2)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
