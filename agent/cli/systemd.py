"""`edge-agent systemd ...`: render and install the service, the socket and the system user."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from agent.cli.systemd_units import (
    CONFIG_FILE,
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

app = typer.Typer(help="systemd units: render and install the service, socket and system user.", no_args_is_help=True)
console = Console(soft_wrap=True, highlight=False)

TemplatesOpt = Annotated[
    Path | None,
    typer.Option(
        "--templates",
        help="Folder with the unit templates (default: systemd/ of this checkout or share/edge-agent/systemd of the venv)",
    ),
]
ROOT = Path("/")


def _fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


def _template_dirs() -> list[Path]:
    """A checkout or editable install keeps systemd/ next to the package; a wheel may ship it
    as data files under the venv's share/."""
    package_root = Path(__file__).resolve().parents[2]
    return [package_root / "systemd", Path(sys.prefix) / "share" / "edge-agent" / "systemd"]


def _templates(explicit: Path | None) -> Path:
    candidates = [explicit] if explicit else _template_dirs()
    for folder in candidates:
        if all((folder / unit.template).is_file() for unit in UNIT_FILES):
            return folder
    _fail(
        f"no unit templates in {', '.join(map(str, candidates))}; pass --templates DIR (the systemd/ folder of the source)"
    )


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

    return render_config(Settings.model_fields, {"socket": str(UNIT_SOCKET_PATH), "zoo": str(default_zoo_dir())})


@app.command("render")
def render_unit(
    unit: Annotated[str, typer.Argument(help="service, socket, sysusers or config")] = "service",
    templates: TemplatesOpt = None,
) -> None:
    """Print a rendered file to stdout (default: the service unit, ExecStart= set to this venv)."""
    if unit == "config":
        typer.echo(_config_text(), nl=False)
        return
    try:
        chosen = unit_file(f"edge-agent.{unit}")
    except KeyError:
        _fail(f"unknown file {unit!r}; choose service, socket, sysusers or config")
    typer.echo(_rendered(chosen, _templates(templates)), nl=False)


def _write(path: Path, text: str) -> None:
    existed = path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.chmod(0o644)
    tmp.replace(path)
    console.print(f"{'updated' if existed else 'wrote'} {path}", markup=False)


def _write_files(prefix: Path, templates: Path) -> None:
    for unit in UNIT_FILES:
        _write(prefix / unit.target, _rendered(unit, templates))
    config = prefix / CONFIG_FILE
    if config.exists():
        console.print(f"kept {config} (never overwritten)", markup=False)
    else:
        _write(config, _config_text())


def _link(prefix: Path) -> None:
    """The symlinks `systemctl enable` would make, for a prefix no systemd manages yet."""
    for link, target in enable_links():
        path = prefix / link
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
    console.print("clients: usermod -aG edge-agent USER   (members of group edge-agent may use the socket)")


@app.command()
def install(
    prefix: Annotated[Path, typer.Option(help="Install below this root; anything but / only writes files")] = ROOT,
    enable: Annotated[
        bool, typer.Option("--enable/--no-enable", help="Enable and start the socket and the service")
    ] = False,
    templates: TemplatesOpt = None,
) -> None:
    """Install the units, the system user and a default config (kept if present)."""
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
