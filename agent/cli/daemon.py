"""`edge-agent serve` and the commands that talk to a running daemon."""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from agent.client import Client, ClientError, DaemonUnreachable

console = Console()
SocketOpt = Annotated[
    Path | None, typer.Option("--socket", help="Daemon socket (default: ./run/edge-agent.sock or $RUNTIME_DIRECTORY)")
]


def _client(socket: Path | None) -> Client:
    return Client(socket)


def _run(fn):  # type: ignore[no-untyped-def]
    try:
        return fn()
    except ClientError as exc:
        console.print(f"[red]error {exc.status} {exc.code}:[/red] {exc.message}")
        raise typer.Exit(1) from None
    except DaemonUnreachable as exc:  # say what to do
        console.print(f"[red]cannot reach the daemon:[/red] {exc}. Is `edge-agent serve` running on this socket?")
        raise typer.Exit(1) from None


def serve(
    socket: SocketOpt = None,
    zoo: Annotated[Path | None, typer.Option(help="Zoo folder (default: the shipped model_zoo)")] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy file (YAML)")] = None,
    config: Annotated[Path | None, typer.Option(help="Daemon settings (YAML); EDGE_AGENT_* env wins over it")] = None,
) -> None:
    """Run the daemon: load and verify the zoo, warm up, serve on the Unix socket."""
    from agent.daemon.lifecycle import serve as run_daemon

    raise typer.Exit(run_daemon(config, socket=socket, zoo=zoo, policy=policy))


def classify(
    images: Annotated[list[Path], typer.Argument(help="Images (PNG, JPEG, ...) or .npy tensors")],
    socket: SocketOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the daemon's JSON answers")] = False,
    deadline_ms: Annotated[float | None, typer.Option(help="Refuse if not answerable in time")] = None,
    explain: Annotated[bool, typer.Option(help="Include the attention map")] = False,
) -> None:
    """Classify images through the daemon."""
    with _client(socket) as client:
        answers = [(p, _run(lambda p=p: client.classify(p, deadline_ms=deadline_ms, explain=explain))) for p in images]
    if as_json:
        typer.echo(json.dumps([{"image": str(p), **a} for p, a in answers], indent=2))
        return
    table = Table()
    for col in ("image", "label", "score", "config", "queue ms", "compute ms"):
        table.add_column(col)
    for path, a in answers:
        table.add_row(
            path.name,
            a["label"],
            f"{a['score']:.3f}",
            f"{a['variant']}@{a['budget']:g}",
            f"{a['queue_ms']:.2f}",
            f"{a['compute_ms']:.2f}",
        )
    console.print(table)


def status(socket: SocketOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """The daemon's configuration and why, latency window, queue, variants."""
    with _client(socket) as client:
        st = _run(client.status)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    cfg = st["config"]
    table = Table(show_header=False, title=f"edge-agent {st['version']} - {'ready' if st['ready'] else 'not ready'}")
    table.add_column("key", style="bold")
    table.add_column("value")
    since = datetime.fromtimestamp(cfg["since"]).strftime("%H:%M:%S")
    table.add_row("configuration", f"{cfg['current']} since {since}")
    table.add_row("why", cfg["reason"])
    if cfg.get("pinned"):
        until = datetime.fromtimestamp(cfg["pinned"]["until"]).strftime("%Y-%m-%d %H:%M:%S")
        table.add_row("pinned", f"{cfg['pinned']['config']} until {until} ({cfg['pinned']['reason']})")
    w = st["window"]
    table.add_row(
        "latency window",
        f"{w['count']} requests in {w['span_s']:g} s: p50 {w['p50_ms']} ms, p95 {w['p95_ms']} ms, p99 {w['p99_ms']} ms",
    )
    q = st["queue"]
    table.add_row(
        "queue", f"{q['inflight']} in flight of {q['capacity']} ({q['workers']} workers x {q['ort_threads']} threads)"
    )
    table.add_row("variants", ", ".join(st["variants"]))
    for name, why in st["failed_variants"].items():
        table.add_row(f"[red]failed {name}[/red]", why)
    for key in ("slo", "policy", "telemetry"):
        if key in st:
            table.add_row(key, json.dumps(st[key]))
    table.add_row("uptime", f"{st['uptime_s']:.0f} s")
    table.add_row("last error", st["last_error"] or "-")
    console.print(table)
    if st["decisions"]:
        dec = Table(title="recent decisions")
        for col in ("time", "from", "to", "reason"):
            dec.add_column(col)
        for d in st["decisions"][-10:]:
            dec.add_row(datetime.fromtimestamp(d["at"]).strftime("%H:%M:%S"), d["old"], d["new"], d["reason"])
        console.print(dec)


def parse_duration(text: str) -> float:
    """`90`, `90s`, `10m`, `2h`, `1d` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match:
        raise typer.BadParameter(f"invalid duration {text!r}; use e.g. 90s, 10m, 2h")
    return float(match.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match.group(2)]


def pin(
    config: Annotated[str, typer.Argument(help="VARIANT@BUDGET, e.g. int8@0.5")],
    duration: Annotated[str, typer.Option("--for", help="How long, e.g. 10m")] = "10m",
    reason: Annotated[str, typer.Option(help="Shown in status and logs")] = "maintenance",
    socket: SocketOpt = None,
) -> None:
    """Pin a configuration for maintenance (admin)."""
    seconds = parse_duration(duration)
    with _client(socket) as client:
        answer = _run(lambda: client.pin(config, seconds, reason))
    until = datetime.fromtimestamp(answer["until"]).strftime("%Y-%m-%d %H:%M:%S")
    console.print(f"pinned {answer['config']} until {until}")


def unpin(socket: SocketOpt = None) -> None:
    """Remove the pin (admin)."""
    with _client(socket) as client:
        answer = _run(client.unpin)
    console.print("unpinned" if answer["unpinned"] else "nothing was pinned")


def register(app: typer.Typer) -> None:
    for fn in (serve, classify, status, pin, unpin):
        app.command()(fn)


__all__ = ["register"]
