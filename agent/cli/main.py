"""The `edge-agent` command line."""

from __future__ import annotations

import typer

from agent import __version__
from agent.cli.daemon import register
from agent.cli.demo import demo
from agent.cli.policy import app as policy_app
from agent.cli.signing import register as register_signing
from agent.cli.systemd import app as systemd_app
from agent.cli.telemetry import app as telemetry_app
from agent.cli.zoo import app as zoo_app

app = typer.Typer(help="edge-agent: adaptive on-device inference for edge gateways.", no_args_is_help=True)
app.add_typer(zoo_app, name="zoo")
app.add_typer(policy_app, name="policy")
app.add_typer(telemetry_app, name="telemetry")
app.add_typer(systemd_app, name="systemd")
register_signing(zoo_app, policy_app)
register(app)
app.command()(demo)


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def main() -> None:
    app()
