"""`edge-agent serve` and the commands that talk to a running daemon."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import datetime
from functools import partial
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from agent.cli.status_view import render_status, span
from agent.client import Client, ClientError, DaemonUnreachable
from agent.paths import locate_socket

console = Console()
errors = Console(stderr=True, soft_wrap=True, highlight=False)  # paths stay whole, one line
T = TypeVar("T")

#: --socket of every command that talks to a daemon; `agent.paths.locate_socket` is the rule.
SocketOpt = Annotated[
    Path | None,
    typer.Option(
        "--socket",
        help="Daemon socket (default: $EDGE_AGENT_SOCKET, else the service's /run/edge-agent/edge-agent.sock "
        "if it exists, else ./run/edge-agent.sock)",
    ),
]


def client(socket: Path | None, timeout: float = 30.0) -> Client:
    """A client on the socket the discovery rule finds, so its errors say which and why."""
    return Client(locate_socket(socket), timeout=timeout)


def call(fn: Callable[[], T]) -> T:
    """Run one request; an error answer or an unreachable daemon is one red line and exit 1."""
    try:
        return fn()
    except ClientError as exc:
        errors.print(f"[red]error {exc.status} {exc.code}:[/red] {escape(exc.message)}")
        raise typer.Exit(1) from None
    except DaemonUnreachable as exc:  # the message names the socket, how it was chosen and what to do
        errors.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(1) from None


def serve(
    socket: Annotated[
        Path | None,
        typer.Option(
            "--socket",
            help="Socket to listen on (default: the `socket` setting: $EDGE_AGENT_SOCKET, "
            "$RUNTIME_DIRECTORY/edge-agent.sock under systemd, else ./run/edge-agent.sock)",
        ),
    ] = None,
    zoo: Annotated[Path | None, typer.Option(help="Zoo folder (default: the shipped model_zoo)")] = None,
    policy: Annotated[Path | None, typer.Option(help="Policy file (YAML)")] = None,
    config: Annotated[Path | None, typer.Option(help="Daemon settings (YAML); EDGE_AGENT_* env wins over it")] = None,
    trusted_key: Annotated[
        list[Path] | None,
        typer.Option(
            "--trusted-key",
            help="minisign public key file (repeatable): the zoo manifest and policy must be signed by one",
        ),
    ] = None,
) -> None:
    """Run the daemon: load and verify the zoo, warm up, serve on the Unix socket."""
    from agent.daemon.lifecycle import serve as run_daemon

    raise typer.Exit(run_daemon(config, socket=socket, zoo=zoo, policy=policy, trusted_keys=trusted_key or None))


def classify(
    images: Annotated[list[Path], typer.Argument(help="Images (PNG, JPEG, ...) or .npy tensors")],
    socket: SocketOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the daemon's JSON answers")] = False,
    deadline_ms: Annotated[float | None, typer.Option(help="Refuse if not answerable in time")] = None,
    explain: Annotated[bool, typer.Option(help="Include the attention map")] = False,
) -> None:
    """Classify images through the daemon."""
    with client(socket) as c:
        answers = [(p, call(partial(c.classify, p, deadline_ms=deadline_ms, explain=explain))) for p in images]
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


def status(
    socket: SocketOpt = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the daemon's `GET /v1/status` answer as it is (JSON), for scripts")
    ] = False,
) -> None:
    """The daemon at a glance: configuration and why, SLO and attainment, telemetry, policy,
    variants and their health, recent switches."""
    with client(socket) as c:
        st = call(c.status)
        where = str(c.where)
    if as_json:
        typer.echo(json.dumps(st, indent=2))
        return
    console.print(render_status(st, time.time(), where))


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
    with client(socket) as c:
        answer = call(lambda: c.pin(config, seconds, reason))
    until = datetime.fromtimestamp(answer["until"]).strftime("%Y-%m-%d %H:%M:%S")
    console.print(f"pinned {answer['config']} for {span(answer['until'] - time.time())}, until {until}")


def unpin(socket: SocketOpt = None) -> None:
    """Remove the pin (admin)."""
    with client(socket) as c:
        answer = call(c.unpin)
    console.print("unpinned" if answer["unpinned"] else "nothing was pinned")


def register(app: typer.Typer) -> None:
    for fn in (serve, classify, status, pin, unpin):
        app.command()(fn)


__all__ = ["SocketOpt", "call", "client", "register"]
