"""`edge-agent systemd ...`: render and install the service, the socket, the system user, the
config and the policy: everything from the package itself, so a plain (non-editable) install works."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from agent.cli.systemd_units import (
    CONFIG_FILE,
    METRICS_SOCKET,
    POLICY_FILE,
    SERVICE,
    SOCKET,
    SYSUSERS,
    UNIT_FILES,
    UNIT_SOCKET_PATH,
    UnitFile,
    enable_links,
    entry_point,
    hidden_by_sandbox,
    render,
    render_config,
    unit_file,
)
from agent.errors import AgentError
from agent.paths import default_policy_path, unit_templates_dir
from agent.private_files import write_atomic

app = typer.Typer(
    help="systemd units: render and install the service, socket, system user, config and policy.", no_args_is_help=True
)
console = Console(soft_wrap=True, highlight=False)

TemplatesOpt = Annotated[
    Path | None,
    typer.Option(
        "--templates",
        help="Folder with your own unit templates (default: the templates shipped in the package)",
    ),
]
ROOT = Path("/")
#: Installed files are root's and readable by all: the service reads them as user edge-agent.
FILE_MODE = 0o644


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


def _templates(explicit: Path | None) -> Path:
    """The templates to render: the package's own (any install, editable or not), or a folder
    the operator names."""
    folder = explicit or unit_templates_dir()
    missing = [unit.template for unit in UNIT_FILES if not (folder / unit.template).is_file()]
    if missing:
        _fail(f"no unit template {', '.join(missing)} in {folder}")
    return folder


def _executable() -> Path:
    return entry_point(sys.executable)


def _rendered(unit: UnitFile, templates: Path) -> str:
    try:
        return render(unit, (templates / unit.template).read_text(encoding="utf-8"), _executable())
    except AgentError as exc:
        _fail(exc.message)


def _config_text() -> str:
    from agent.paths import default_zoo_dir
    from agent.settings import Settings

    computed = {"socket": str(UNIT_SOCKET_PATH), "zoo": str(default_zoo_dir()), "policy": str(ROOT / POLICY_FILE)}
    return render_config(Settings.model_fields, computed)


@app.command("render")
def render_unit(
    unit: Annotated[
        str, typer.Argument(help="service, socket, metrics-socket, sysusers, config or policy")
    ] = "service",
    templates: TemplatesOpt = None,
) -> None:
    """Print a file `install` writes to stdout (default: the service unit, ExecStart= set to this venv)."""
    if unit == "config":
        typer.echo(_config_text(), nl=False)
        return
    if unit == "policy":
        typer.echo(_policy_text(), nl=False)
        return
    try:
        chosen = unit_file(METRICS_SOCKET if unit == "metrics-socket" else f"edge-agent.{unit}")
    except KeyError:
        _fail(f"unknown file {unit!r}; choose service, socket, metrics-socket, sysusers, config or policy")
    typer.echo(_rendered(chosen, _templates(templates)), nl=False)


def _policy_text() -> str:
    return default_policy_path().read_text(encoding="utf-8")


def _current(path: Path) -> tuple[bytes, int] | None:
    """The content and permission bits of `path`, or None if there is no such file."""
    try:
        return path.read_bytes(), stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


def _write(path: Path, text: str, *, operator_owned: bool = False) -> None:
    """Write `path` atomically and say what happened, so that a rerun reads "unchanged" where
    nothing changed. A file the operator owns (the config, the policy) is written only if
    absent: an edit there is never overwritten."""
    current = _current(path)
    if current is not None and current[0] == text.encode("utf-8") and (operator_owned or current[1] == FILE_MODE):
        console.print(f"unchanged {path}", markup=False)
        return
    if current is not None and operator_owned:
        console.print(f"kept {path} (edited; never overwritten)", markup=False)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text.encode("utf-8"), FILE_MODE)
    console.print(f"{'updated' if current is not None else 'wrote'} {path}", markup=False)


def _write_files(prefix: Path, templates: Path) -> None:
    for unit in UNIT_FILES:
        _write(prefix / unit.target, _rendered(unit, templates))
    _write(prefix / CONFIG_FILE, _config_text(), operator_owned=True)
    _write(prefix / POLICY_FILE, _policy_text(), operator_owned=True)


def _link(prefix: Path) -> None:
    """The symlinks `systemctl enable` would make, for a prefix no systemd manages yet."""
    for link, target in enable_links():
        path = prefix / link
        if path.is_symlink() and os.readlink(path) == str(target):
            console.print(f"unchanged {path} -> {target}", markup=False)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink() or path.exists():
            path.unlink()
        path.symlink_to(target)
        console.print(f"linked {path} -> {target}", markup=False)


def _run(*command: str) -> None:
    console.print(f"[bold]$ {escape(' '.join(command))}[/bold]")
    result = subprocess.run(command, check=False)
    if result.returncode != 0:
        _fail(f"{command[0]} exited with status {result.returncode}")


def _activate(enable: bool) -> None:
    """On the live system: create the user, make systemd see the units, optionally start them."""
    sysusers = shutil.which("systemd-sysusers")
    if sysusers:
        _run(sysusers, str(ROOT / unit_file(SYSUSERS).target))
    else:
        console.print(
            "[yellow]systemd-sysusers not found:[/yellow] create the user yourself: "
            "useradd --system --user-group --home-dir /var/lib/edge-agent --shell /usr/sbin/nologin edge-agent"
        )
    systemctl = shutil.which("systemctl")
    if not systemctl or not Path("/run/systemd/system").is_dir():
        console.print("[yellow]systemd is not running here:[/yellow] skipped systemctl daemon-reload/enable")
        return
    _run(systemctl, "daemon-reload")
    if enable:
        _run(systemctl, "enable", "--now", SOCKET, SERVICE)


def _next_steps(prefix: Path, enable: bool) -> None:
    if prefix != ROOT:
        console.print(f"files only (prefix {prefix}): no systemd-sysusers or systemctl was run", markup=False)
    if not enable:
        console.print(f"next: systemctl enable --now {SOCKET} {SERVICE}   (or only one of them; see docs/install.md)")
    console.print(
        f"policy: {ROOT / POLICY_FILE}   (check an edit with `edge-agent policy validate`; the daemon reloads it when saved)",
        markup=False,
    )
    console.print("clients: usermod -aG edge-agent USER   (members of group edge-agent may use the socket)")
    console.print(
        f"fleet metrics (opt-in): systemctl enable --now {METRICS_SOCKET} && systemctl restart {SERVICE}"
        "   (read-only /metrics over TCP; see docs/fleet.md)"
    )


@app.command()
def install(
    prefix: Annotated[Path, typer.Option(help="Install below this root; anything but / only writes files")] = ROOT,
    enable: Annotated[
        bool, typer.Option("--enable/--no-enable", help="Enable and start the socket and the service")
    ] = False,
    templates: TemplatesOpt = None,
) -> None:
    """Install the units, the system user, a default config and the default policy (an existing
    config or policy is kept)."""
    prefix = Path(os.path.abspath(prefix))
    executable = _executable()
    if not os.access(executable, os.X_OK):
        _fail(f"{executable} is not an executable file; install the package into this venv (pip install ...)")
    hidden = hidden_by_sandbox(executable)
    if hidden and prefix == ROOT:
        _fail(f"{executable}: the service could not start it ({hidden}); install the venv under /opt or /usr/local")
    if hidden:
        console.print(
            f"[yellow]warning:[/yellow] {escape(str(executable))}: {hidden}, the installed service could not start it"
        )
    folder = _templates(templates)
    try:
        _write_files(prefix, folder)
        if enable and prefix != ROOT:
            _link(prefix)
    except PermissionError as exc:
        _fail(f"{exc.filename}: permission denied (installing to {prefix} needs root)")
    if prefix == ROOT:
        _activate(enable)
    _next_steps(prefix, enable)
