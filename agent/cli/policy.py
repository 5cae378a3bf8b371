"""`edge-agent policy ...`: publish the schema, validate files, ask the daemon to reload.

(`policy simulate`, replaying a trace through the controller, registers on this same `app`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from agent.client import Client, ClientError, DaemonUnreachable
from agent.errors import AgentError
from agent.policy.loader import PolicyError, load_policy
from agent.policy.schema import Policy, policy_warnings

app = typer.Typer(help="The operator policy file: schema, validation, reload.", no_args_is_help=True)


@app.command()
def schema() -> None:
    """Print the policy file's JSON Schema (for editors, e.g. yaml-language-server)."""
    typer.echo(json.dumps(Policy.model_json_schema(), indent=2))


def _zoo_variants(zoo: Path | None) -> list[str] | None:
    """Variant names of the zoo to check names against; None when there is no readable manifest."""
    from agent.errors import AgentError
    from agent.paths import default_zoo_dir
    from agent.zoo.manifest import MANIFEST_NAME, load_manifest

    manifest = (zoo or default_zoo_dir()) / MANIFEST_NAME
    if not manifest.is_file():
        return None
    try:
        return [v.name for v in load_manifest(manifest).variants]
    except AgentError:
        return None


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Policy files (YAML)")],
    zoo: Annotated[
        Path | None, typer.Option(help="Check variant names against this zoo (default: the shipped one)")
    ] = None,
) -> None:
    """Check policy files: `ok FILE` for each valid one, the problems of each invalid one; exit 1 if any is invalid."""
    known = _zoo_variants(zoo)
    bad = 0
    for path in files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            bad += 1
            for problem in exc.problems:
                typer.echo(problem, err=True)
            continue
        typer.echo(f"ok {path}")
        for warning in policy_warnings(policy, known):
            typer.echo(f"warning: {path}: {warning}", err=True)
    if bad:
        raise typer.Exit(1)


@app.command()
def reload(
    socket: Annotated[
        Path | None,
        typer.Option("--socket", help="Daemon socket (default: ./run/edge-agent.sock or $RUNTIME_DIRECTORY)"),
    ] = None,
) -> None:
    """Ask the running daemon to re-read its policy file (admin); an invalid file is refused and the old one kept."""
    try:
        with Client(socket) as client:
            answer = client.reload()
    except ClientError as exc:
        typer.echo(f"error {exc.status} {exc.code}: {exc.message}", err=True)
        raise typer.Exit(1) from None
    except DaemonUnreachable as exc:  # say what to do, no traceback
        typer.echo(f"cannot reach the daemon: {exc}. Is `edge-agent serve` running on this socket?", err=True)
        raise typer.Exit(1) from None
    typer.echo(json.dumps(answer, indent=2))
    if answer.get("ok") is False or answer.get("reloaded") is False:
        raise typer.Exit(1)


@app.command()
def simulate(
    policy_file: Annotated[Path, typer.Argument(help="Policy file (YAML)")],
    trace: Annotated[Path, typer.Option("--trace", help="Recorded trace (JSONL, from `edge-agent telemetry record`)")],
    plot_out: Annotated[Path | None, typer.Option("--plot", help="Write a PNG timeline here")] = None,
    zoo: Annotated[Path | None, typer.Option(help="Zoo folder (default: the shipped one)")] = None,
    threads: Annotated[int, typer.Option(help="ORT threads per request the profile is read at")] = 1,
) -> None:
    """Replay a recorded trace through the controller and print its decisions."""
    from rich.console import Console
    from rich.table import Table

    from agent.control.controller import options_from_manifest
    from agent.control.simulate import plot, summary
    from agent.control.simulate import simulate as run_simulation
    from agent.paths import default_zoo_dir, state_dir
    from agent.telemetry.formats import read_trace
    from agent.zoo.accuracy_tables import select_table
    from agent.zoo.manifest import MANIFEST_NAME, latency_table, load_manifest

    console = Console(width=max(Console().width, 120))
    try:
        policy = load_policy(policy_file)
        entries = read_trace(trace)
        zoo_dir = zoo or default_zoo_dir()
        manifest = load_manifest(zoo_dir / MANIFEST_NAME)
    except AgentError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    table_ = latency_table(manifest, None)
    accuracy = select_table(manifest, policy.accuracy, state_dir())
    if accuracy.note:
        console.print(f"[yellow]accuracy table:[/yellow] {accuracy.note}")
    options = options_from_manifest(
        manifest,
        table_,
        {v.name for v in manifest.variants},
        threads,
        policy.slo.percentile,
        accuracy.estimates,
        accuracy.name,
    )
    steps = run_simulation(policy, entries, options)
    table = Table(title=f"decisions: {policy_file.name} on {trace.name}")
    for col in ("t (s)", "cpu %", "temp C", "battery %", "config", "predicted ms", "SLO ms", "reason"):
        table.add_column(col)
    for s in steps:
        if not s.decision.switch:
            continue
        snap = s.entry.snapshot
        table.add_row(
            f"{s.t:.1f}",
            _fmt(snap.cpu_percent),
            _fmt(snap.temperature_c),
            _fmt(snap.battery_percent),
            str(s.decision.config),
            _fmt(s.latency_ms),
            f"{s.decision.slo_ms:g}",
            s.decision.reason,
        )
    console.print(table)
    info = summary(steps)
    attainment = info["predicted_attainment"]
    console.print(
        f"{info['steps']} steps over {info['duration_s']:.0f} s, {info['switches']} switches, predicted SLO attainment "
        + ("n/a (no latency in the trace)" if attainment is None else f"{attainment:.1%}")
    )
    if plot_out:
        plot(
            steps,
            plot_out,
            f"policy simulate: {policy_file.name} on {trace.name}",
            {o.config: o.accuracy for o in options},
        )
        console.print(f"wrote {plot_out}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
