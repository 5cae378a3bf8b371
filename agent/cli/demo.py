"""`edge-agent demo`: the daemon on the shipped zoo and default policy, a short contention
schedule against it, and a live view of what it decides and why.

Everything is laid out for the terminal it runs in, 80 columns included: reasons wrap at
word boundaries and are never cut, tables keep each word whole. What it writes (the timeline
PNG, the decisions with their reasons in full) goes to a results folder it names."""

from __future__ import annotations

import json
import math
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from agent.cli.launch import running_daemon
from agent.cli.results import results_folder
from agent.cli.scenario import (
    REACTION_WINDOW,
    Phase,
    Reaction,
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

if TYPE_CHECKING:
    from matplotlib.figure import Figure

console = Console()

#: What the demo writes into its results folder.
TIMELINE_NAME = "timeline.png"
DECISIONS_NAME = "decisions.jsonl"
#: Decisions the live view shows at most (fewer when the terminal is short).
RECENT_DECISIONS = 5
#: Test images sent, at most (labelled, so the summary can show served accuracy).
IMAGES = 200


def demo(
    phase_s: Annotated[float, typer.Option(min=0.5, help="Seconds per phase")] = 6.0,
    rate: Annotated[float, typer.Option(min=1.0, help="Requests per second")] = 30.0,
    results: Annotated[
        Path | None,
        typer.Option(
            help=f"Folder for {TIMELINE_NAME} and {DECISIONS_NAME} (default: a new folder under the temp directory)"
        ),
    ] = None,
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
    folder = results_folder(results, "demo")
    schedule = default_schedule()
    policy = default_policy_path()
    slo_ms = load_policy(policy).slo.latency_ms
    pins = compare if compare is not None else ["full@1"]
    console.print(f"starting the daemon on the shipped zoo with {policy.name}; {len(schedule)} phases of {phase_s:g} s")
    images = labelled_pngs(min(IMAGES, math.ceil(rate * phase_s * len(schedule))))  # no more than requests
    journal: dict[tuple[Any, ...], dict[str, Any]] = {}
    records = _drive(None, schedule, phase_s, rate, images, policy, slo_ms, record_trace, journal)
    reactions = reaction_times(records, slo_ms, phase_s, len(schedule))
    console.line()
    console.print(_summary(summarize(records, slo_ms, len(schedule)), reactions, schedule, slo_ms))
    for note in _later_misses(reactions, schedule):
        console.print(note)
    timeline, decisions = folder / TIMELINE_NAME, folder / DECISIONS_NAME
    figure = timeline_figure(records, schedule, phase_s, slo_ms)
    figure.savefig(timeline, dpi=100)
    with decisions.open("w", encoding="utf-8") as f:
        for entry in sorted(journal.values(), key=lambda e: e["at"] or 0.0):
            f.write(json.dumps(entry) + "\n")
    console.line()
    console.print(f"results in {folder}:", soft_wrap=True)  # a path too long for the line is not split
    files = Table.grid(padding=(0, 2))
    files.add_row(f"  {TIMELINE_NAME}", "every request's latency, by the configuration that answered")
    files.add_row(f"  {DECISIONS_NAME}", "every configuration the daemon put in force, and why")
    console.print(files)
    if pins:
        runs = {"edge-agent": records}
        for pin in pins:
            console.line()
            console.print(f"running the same schedule with {pin} pinned, to compare")
            runs[f"pinned {pin}"] = _drive(pin, schedule, phase_s, rate, images, policy, slo_ms, None, None)
        console.line()
        console.print(_comparison(runs, schedule, slo_ms))


def _summary(summary: dict[str, Any], reactions: list[Reaction], schedule: list[Phase], slo_ms: float) -> Table:
    """Per phase and overall, one configuration a line so no name is split; the later misses
    of a phase go below the table in words (`_later_misses`), not into a cell."""
    table = Table(
        title=f"summary (SLO p95 <= {slo_ms:g} ms)",
        caption=f"reaction: seconds from the phase's start until the p95 of its last {REACTION_WINDOW} "
        "requests was back under the SLO (-: it never went over; never: not by the phase's end)",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        show_edge=False,
        collapse_padding=True,
    )
    # Only the phase's name may wrap (at its spaces): at 80 columns the rest fits unwrapped.
    table.add_column("phase")
    for col in ("requests", "SLO met", "p95 ms", "accuracy"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("configurations", no_wrap=True)
    table.add_column("reaction", justify="right", no_wrap=True)

    def row(name: str, ph: dict[str, Any], reaction: str) -> list[str]:
        return [
            name,
            str(ph["requests"]),
            f"{ph['attainment']:.1%}",
            "-" if ph["p95_ms"] is None else f"{ph['p95_ms']:.1f}",
            "-" if ph["accuracy"] is None else f"{ph['accuracy']:.1%}",
            "\n".join(ph["configs"]),
            reaction,
        ]

    for i, ph in enumerate(summary["phases"]):
        if ph["requests"]:
            table.add_row(*row(schedule[i].name, ph, _reaction_cell(reactions[i])))
    table.add_section()
    table.add_row(*row("all", {**summary["overall"], "configs": []}, ""))
    return table


def _reaction_cell(reaction: Reaction) -> str:
    if reaction.seconds is None:
        return "never"
    return "-" if reaction.seconds == 0 else f"{reaction.seconds:g} s"


def _later_misses(reactions: list[Reaction], schedule: list[Phase]) -> list[str]:
    """A sentence for each phase whose p95 went over the SLO again after its reaction."""
    return [f"{p.name}: {r}" for p, r in zip(schedule, reactions, strict=True) if r.later]


def _comparison(runs: dict[str, list[Record]], schedule: list[Phase], slo_ms: float) -> Table:
    """Attainment and served accuracy side by side, the load phases (no rule applies) apart
    from those where the policy's rules choose cheaper configurations on purpose."""
    ruled = {i for i, p in enumerate(schedule) if p.telemetry}
    table = Table(title="edge-agent vs pinned configurations, same schedule, same requests")
    for col in ("run", "SLO met", "accuracy, load phases", "accuracy, battery + heat", "accuracy"):
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
    schedule: list[Phase],
    phase_s: float,
    rate: float,
    images: list[tuple[bytes, str]],
    policy: Path,
    slo_ms: float,
    record_trace: Path | None,
    journal: dict[tuple[Any, ...], dict[str, Any]] | None,
) -> list[Record]:
    """One run of the schedule against a fresh daemon; live view for the adaptive run, whose
    decisions go into `journal`."""
    with tempfile.TemporaryDirectory(prefix="edge-agent-demo-") as tmp:
        override = Path(tmp) / "telemetry.json"
        override.write_text("{}")
        env = {**injected_telemetry_env(override), "EDGE_AGENT_CONTROLLER_INTERVAL_S": "0.25"}
        with running_daemon(env=env, args=["--policy", str(policy)]) as (_, sock), Client(sock) as client:
            if pin is not None:
                client.pin(pin, 86400, "demo comparison")
                return run_schedule(sock, override, schedule, phase_s, rate, images)
            # Transient, and its last state printed after it like any other output: the same
            # lines in a terminal and in a pipe (where rich leaves a live view's last line open).
            last: dict[str, Any] = {}
            with Live(console=console, refresh_per_second=4, transient=True) as live:
                trace = record_trace.open("w", encoding="utf-8") if record_trace else None

                def tick(index: int, elapsed: float, records: list[Record]) -> None:
                    try:
                        status = client.status()
                    except Exception:  # the view must not stop the demo
                        status = {}
                    if journal is not None:
                        _note_decisions(status, journal)
                    last.update(phase=schedule[index].name, elapsed=elapsed, status=status, records=records)
                    live.update(_view(console, slo_ms=slo_ms, fit=True, **last))
                    if trace is not None and status:
                        trace.write(_trace_line(status) + "\n")

                try:
                    return run_schedule(sock, override, schedule, phase_s, rate, images, on_tick=tick)
                finally:
                    if trace is not None:
                        trace.close()
                    live.stop()
                    if last:
                        console.print(_view(console, slo_ms=slo_ms, fit=False, **last))


def _note_decisions(status: dict[str, Any], journal: dict[tuple[Any, ...], dict[str, Any]]) -> None:
    """Every configuration the status shows in force, with its reason, once: the switches and
    the current reason (a decision that keeps the configuration changes only the reason)."""
    cfg = status.get("config") or {}
    seen = [(d.get("at"), d.get("new"), d.get("reason")) for d in status.get("decisions", [])]
    seen.append((cfg.get("since"), cfg.get("current"), cfg.get("reason")))
    for at, config, reason in seen:
        if config and reason:
            journal.setdefault((at, config, reason), {"at": at, "config": config, "reason": reason})


def _view(
    con: Console,
    *,
    phase: str,
    elapsed: float,
    status: dict[str, Any],
    records: list[Record],
    slo_ms: float,
    fit: bool,
) -> RenderableType:
    """The facts, then the recent decisions: with `fit`, only as many as fit the terminal's
    height (a live view taller than the terminal is cropped)."""
    panel = Panel(_facts(phase, elapsed, status, records, slo_ms), title="edge-agent demo")
    room = con.height - len(con.render_lines(panel, con.options)) - 1  # the cursor's line
    recent = status.get("decisions", [])[-RECENT_DECISIONS:]
    while recent:
        block = _recent(recent)
        if not fit or len(con.render_lines(block, con.options)) <= room:
            return Group(panel, block)
        recent = recent[1:]
    return panel


def _facts(phase: str, elapsed: float, status: dict[str, Any], records: list[Record], slo_ms: float) -> Table:
    cfg, slo, tele = status.get("config") or {}, status.get("slo") or {}, status.get("telemetry") or {}
    top = Table.grid(padding=(0, 2))
    top.add_column(style="bold", no_wrap=True)
    top.add_column()
    top.add_row("phase", f"{phase}  ({elapsed:.0f} s)")
    top.add_row("telemetry", _telemetry(tele))
    top.add_row("configuration", Text(str(cfg.get("current", "-")), style="cyan"))
    top.add_row("why", Text(str(cfg.get("reason", ""))))
    observed = slo.get("observed_ms")
    colour = "green" if observed is not None and observed <= slo_ms else "red"
    top.add_row(
        f"p{slo.get('percentile', 95):g} vs SLO",
        Text.assemble(("-" if observed is None else f"{observed:.1f} ms", colour), f" / {slo.get('latency_ms')} ms"),
    )
    if records:
        met = sum(1 for r in records if r.latency_ms <= slo_ms) / len(records)
        answered = [r for r in records if r.status == 200]
        acc = sum(r.correct for r in answered) / len(answered) if answered else 0
        top.add_row("so far", f"{len(records)} requests, SLO met {met:.1%}, served accuracy {acc:.1%}")
    return top


def _telemetry(tele: dict[str, Any]) -> str:
    """The readings there are; an absent sensor is left out, not shown as None."""
    parts = [f"CPU {tele.get('cpu_percent') or 0:.0f}%", f"load {tele.get('load_avg_1m') or 0:.2f}"]
    if tele.get("temperature_c") is not None:
        parts.append(f"{tele['temperature_c']:.0f} C")
    if tele.get("battery_percent") is not None:
        on_ac = tele.get("on_ac")
        power = "" if on_ac is None else ", on AC" if on_ac else ", on battery"
        parts.append(f"battery {tele['battery_percent']:.0f}%{power}")
    return ", ".join(parts)


def _recent(decisions: Sequence[dict[str, Any]]) -> Group:
    """Recent switches: the time, then the configuration and its reason, wrapped in full."""
    grid = Table.grid(padding=(0, 2))
    grid.add_column(no_wrap=True)
    grid.add_column()
    for d in decisions:
        when = time.strftime("%H:%M:%S", time.localtime(d["at"]))
        grid.add_row(when, Text.assemble((d["new"], "cyan"), ": ", d["reason"]))
    return Group(Text("recent decisions", style="bold"), grid)


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


def timeline_figure(records: list[Record], schedule: list[Phase], phase_s: float, slo_ms: float) -> Figure:
    """Every request's latency by the configuration that answered it, phases named above the
    axes and the legend below them, so neither covers a point or a label."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 5), layout="constrained")
    ax = fig.subplots()
    top = 4 * slo_ms  # refusals (infinite latency) and outliers are drawn at the top
    for k, cfg in enumerate(sorted({r.config for r in records})):
        xs = [r.sent for r in records if r.config == cfg]
        ys = [min(r.latency_ms, top) for r in records if r.config == cfg]
        ax.scatter(xs, ys, s=5, color=f"C{k}", label=cfg)
    ax.axhline(slo_ms, color="r", ls="--", label=f"SLO {slo_ms:g} ms")
    for i in range(1, len(schedule), 2):
        ax.axvspan(i * phase_s, (i + 1) * phase_s, color="0.92", zorder=0)
    phases = ax.secondary_xaxis("top")
    phases.set_xticks([(i + 0.5) * phase_s for i in range(len(schedule))], [p.name for p in schedule], fontsize=8)
    phases.tick_params(length=0)
    ax.set_xlim(0, len(schedule) * phase_s)
    ax.set_ylim(0, top)
    ax.set_xlabel("seconds")
    ax.set_ylabel(f"latency ms (clipped at {top:g})")
    fig.suptitle("edge-agent demo: latency of each request, by the configuration that answered it")
    fig.legend(loc="outside lower center", ncol=6, fontsize=8, markerscale=3)
    return fig
