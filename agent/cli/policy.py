"""`edge-agent policy ...`: publish the schema, validate files, ask the daemon to reload.

(`policy simulate`, replaying a trace through the controller, registers on this same `app`.)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agent.cli.daemon import SocketOpt, call, client
from agent.cli.status_view import describe_reload
from agent.errors import AgentError
from agent.policy.loader import PolicyError, load_policy
from agent.policy.schema import Policy, policy_warnings

if TYPE_CHECKING:
    from rich.console import RenderableType

    from agent.control.simulate import Step

app = typer.Typer(help="The operator policy file: schema, validation, reload.", no_args_is_help=True)


@app.command()
def schema() -> None:
    """Print the policy file's JSON Schema (for editors, e.g. yaml-language-server)."""
    typer.echo(json.dumps(Policy.model_json_schema(), indent=2))


def _zoo_variants(zoo: Path | None) -> list[str] | None:
    """Variant names to check the files against: those of `--zoo` (its manifest must be readable,
    else a usage error), else of the shipped zoo where there is one; None (with a note) when no
    zoo is at hand, as on a machine that has the CLI but not the models."""
    from agent.errors import AgentError
    from agent.paths import default_zoo_dir
    from agent.zoo.manifest import MANIFEST_NAME, load_manifest

    manifest = (zoo or default_zoo_dir()) / MANIFEST_NAME
    try:
        return [v.name for v in load_manifest(manifest).variants]
    except AgentError as exc:
        if zoo is not None:
            raise typer.BadParameter(exc.message, param_hint="--zoo") from None
        typer.echo(f"note: variant names not checked, no zoo at hand ({exc.message}); give --zoo DIR", err=True)
        return None


@app.command()
def validate(
    files: Annotated[list[Path], typer.Argument(help="Policy files (YAML)")],
    zoo: Annotated[
        Path | None,
        typer.Option(help="Variant names must be this zoo's (default: the shipped zoo, where there is one)"),
    ] = None,
) -> None:
    """Check policy files: `ok FILE` for each valid one, every problem of each invalid one; exit 1 if any is
    invalid. A variant name the zoo lacks is a problem, as it is to the daemon."""
    known = _zoo_variants(zoo)
    bad = 0
    for path in files:
        try:
            policy = load_policy(path, known)
        except PolicyError as exc:
            bad += 1
            for problem in exc.problems:
                typer.echo(problem, err=True)
            continue
        typer.echo(f"ok {path}")
        for warning in policy_warnings(policy):
            typer.echo(f"warning: {path}: {warning}", err=True)
    if bad:
        raise typer.Exit(1)


@app.command()
def reload(
    socket: SocketOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the daemon's answer as it is (JSON), for scripts")
    ] = False,
) -> None:
    """Ask the running daemon to re-read its policy file and config (admin); an invalid file is
    refused and the old one kept (exit 1)."""
    with client(socket) as c:
        answer = call(c.reload)
    ok, line, details = describe_reload(answer, time.time())
    if as_json:
        typer.echo(json.dumps(answer, indent=2))
    else:
        typer.echo(line, err=not ok)
        for detail in details:
            typer.echo(detail, err=True)
    if not ok:
        raise typer.Exit(1)


@app.command()
def simulate(
    policy_file: Annotated[Path, typer.Argument(help="Policy file (YAML)")],
    trace: Annotated[Path, typer.Option("--trace", help="Recorded trace (JSONL, from `edge-agent telemetry record`)")],
    plot_png: Annotated[bool, typer.Option("--plot", help="Also draw the run as a PNG timeline, in --results")] = False,
    results: Annotated[
        Path | None, typer.Option(help="Folder for the PNG (default: a new folder under the temp directory)")
    ] = None,
    zoo: Annotated[Path | None, typer.Option(help="Zoo folder (default: the shipped one)")] = None,
    threads: Annotated[int, typer.Option(help="ORT threads per request the profile is read at")] = 1,
) -> None:
    """Replay a recorded trace through the controller and print its decisions."""
    from rich.console import Console

    from agent.cli.results import results_folder
    from agent.control.controller import options_from_manifest
    from agent.control.simulate import plot, summary
    from agent.control.simulate import simulate as run_simulation
    from agent.paths import default_zoo_dir, state_dir
    from agent.telemetry.formats import read_trace
    from agent.zoo.accuracy_tables import select_table
    from agent.zoo.manifest import MANIFEST_NAME, latency_table, load_manifest

    console = Console()
    try:
        policy = load_policy(policy_file)
        entries = read_trace(trace)
        zoo_dir = zoo or default_zoo_dir()
        manifest = load_manifest(zoo_dir / MANIFEST_NAME)
    except AgentError as exc:
        typer.echo(f"error: {exc.message}", err=True)
        raise typer.Exit(1) from None
    folder = results_folder(results, "simulate") if plot_png else None
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
    console.print(_switches(steps, f"decisions: {policy_file.name} on {trace.name}, switches only"))
    info = summary(steps)
    attainment = info["predicted_attainment"]
    console.line()
    console.print(
        f"{info['steps']} steps over {info['duration_s']:.0f} s, {info['switches']} switches, predicted SLO attainment "
        + ("n/a (no latency in the trace)" if attainment is None else f"{attainment:.1%}")
    )
    if folder is not None:
        out = folder / f"{policy_file.stem}-on-{trace.stem}.png"
        plot(
            steps,
            out,
            f"policy simulate: {policy_file.name} on {trace.name}",
            {o.config: o.accuracy for o in options},
        )
        console.print("timeline (PNG):")
        console.print(f"  {out}", soft_wrap=True)  # a path too long for the line is not split


def _switches(steps: list[Step], title: str) -> RenderableType:
    """Each switch as the time, then what the controller chose with the readings and
    prediction it chose on, then its reason in full: wraps at any width, no column squeezed."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    grid.add_column(justify="right", no_wrap=True)
    grid.add_column()
    for s in steps:
        if not s.decision.switch:
            continue
        snap, d = s.entry.snapshot, s.decision
        readings = [f"CPU {_fmt(snap.cpu_percent)}%"]
        if snap.temperature_c is not None:
            readings.append(f"{_fmt(snap.temperature_c)} C")
        if snap.battery_percent is not None:
            readings.append(f"battery {_fmt(snap.battery_percent)}%")
        predicted = "" if s.latency_ms is None else f"predicted {s.latency_ms:.1f} ms, "
        head = Text.assemble((str(d.config), "cyan"), f"  {predicted}SLO {d.slo_ms:g} ms; {', '.join(readings)}")
        grid.add_row(f"{s.t:.1f} s", Text.assemble(head, "\n", d.reason))
    return Group(Text(title, style="bold"), grid)


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
