"""`edge-agent telemetry ...`: look at the device as the controller does, and record traces."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from agent.client import Client, ClientError, DaemonUnreachable
from agent.daemon.logs import configure_logging
from agent.paths import locate_socket
from agent.telemetry.formats import observed_from_status, trace_line
from agent.telemetry.psutil_reader import PsutilSource

app = typer.Typer(help="Device telemetry: CPU, temperature, battery, power.", no_args_is_help=True)
console = Console()
progress_console = Console(stderr=True)

SysfsOpt = Annotated[Path, typer.Option("--sysfs-root", help="Where sysfs is mounted (a fake tree in tests).")]
UNITS = {
    "cpu_percent": "%",
    "load_avg_1m": "",
    "cpu_freq_mhz": " MHz",
    "temperature_c": " C",
    "battery_percent": "%",
    "memory_percent": "%",
}


def _value(name: str, value: Any) -> str:
    if value is None:
        return "[dim]-[/dim]"
    if name == "time":
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))
    if name == "per_cpu_percent":
        return " ".join(f"{v:g}" for v in value) or "[dim]-[/dim]"
    if name == "on_ac":
        return "yes" if value else "no"
    return f"{value:g}{UNITS.get(name, '')}"


@app.command()
def show(
    as_json: Annotated[bool, typer.Option("--json", help="Print the snapshot as JSON.")] = False,
    sysfs_root: SysfsOpt = Path("/sys"),
) -> None:
    """One snapshot of the device; CPU % is measured over half a second."""
    configure_logging("warning")  # sensor warnings on stderr, never inside the JSON
    source = PsutilSource(sysfs_root)  # takes the CPU baseline
    time.sleep(0.5)
    snapshot = source.read(time.time())
    if as_json:
        typer.echo(json.dumps(snapshot.as_dict(), indent=2))
        return
    table = Table(show_header=False, title="telemetry")
    table.add_column("field", style="bold")
    table.add_column("value")
    for name, value in snapshot.as_dict().items():
        if name != "stale":
            stale = " [yellow](stale)[/yellow]" if name in snapshot.stale else ""
            table.add_row(name, _value(name, value) + stale)
    console.print(table)


def _observed(client: Client) -> dict[str, Any] | None:
    """The daemon's configuration and latency window, or None when no daemon answers."""
    try:
        return observed_from_status(client.status())
    except (DaemonUnreachable, ClientError, ValueError, KeyError, TypeError):
        return None


@app.command()
def record(
    out: Annotated[Path, typer.Option("--out", help="The JSONL trace to write (replaced).")],
    seconds: Annotated[float, typer.Option("--seconds", min=0, help="How long to record.")] = 60.0,
    interval: Annotated[float, typer.Option("--interval", min=0.05, help="Seconds between lines.")] = 1.0,
    socket: Annotated[
        Path | None,
        typer.Option("--socket", help="Daemon socket, for observed latencies (found as for `edge-agent status`)."),
    ] = None,
    sysfs_root: SysfsOpt = Path("/sys"),
) -> None:
    """Record a trace: one JSONL line per interval, with the daemon's latencies if it runs.

    Each line holds the snapshot and, when a daemon answers on the socket, its configuration
    and latency window as `observed`; `telemetry_source: trace` replays the file."""
    configure_logging("warning")
    where = locate_socket(socket)
    lines = max(1, int(seconds / interval + 1e-9))
    source = PsutilSource(sysfs_root)
    start = time.monotonic()
    written, daemon_up = 0, None
    columns = (TextColumn("recording"), BarColumn(), TextColumn("{task.completed}/{task.total} lines"))
    try:
        with (
            out.open("w", encoding="utf-8") as f,
            Client(where, timeout=min(2.0, interval)) as client,
            Progress(*columns, TimeRemainingColumn(), console=progress_console) as progress,
        ):
            task = progress.add_task("record", total=lines)
            for i in range(1, lines + 1):
                # Deadlines from the start, not sleeps between lines: slow reads do not drift the trace.
                time.sleep(max(0.0, start + i * interval - time.monotonic()))
                snapshot = source.read(time.time())
                observed = _observed(client)
                if (observed is not None) != daemon_up:
                    daemon_up = observed is not None
                    what = "recording its latencies" if daemon_up else "recording telemetry only"
                    progress.console.print(f"{'daemon' if daemon_up else 'no daemon'} on {where}: {what}")
                f.write(trace_line(snapshot, observed) + "\n")
                f.flush()  # an interrupted recording is still a valid trace
                written += 1
                progress.advance(task)
    except OSError as exc:
        console.print(f"[red]error:[/red] {out}: {exc.strerror or exc}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        console.print(f"stopped: {written} lines in {out}")
        raise typer.Exit(130) from None
    console.print(f"{written} lines in {out}")
