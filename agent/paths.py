"""Where things are: the socket and state (systemd's directories when run as a service,
`./run` and `./state` in a checkout), the shipped zoo and the shipped default policy.

A leaf: standard library only, so settings and every CLI command can name a default path
without importing what lives there (the zoo would pull in onnxruntime).

Two views of the socket and the state directory:
- the daemon's (`default_socket`, `state_dir`): where `edge-agent serve` binds and writes,
  from systemd's $RUNTIME_DIRECTORY / $STATE_DIRECTORY or the current directory;
- a client's (`locate_socket`, `locate_state_dir`): which daemon a command on this machine
  means. On a gateway that is the installed service, whose paths the client cannot get from
  systemd, so the rule also looks for the service's directories before falling back to the
  checkout's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

SOCKET_NAME = "edge-agent.sock"
DEVICE_PROFILE_NAME = "device-profile.json"
#: The accuracy table measured on the operator's own images (`edge-agent zoo eval --save`).
SITE_ACCURACY_NAME = "site-accuracy.json"
#: The operator's policy in the service's configuration directory (/etc/edge-agent).
POLICY_NAME = "policy.yaml"

#: The settings' environment variables (`Settings.socket`, `Settings.state_dir` with the
#: EDGE_AGENT_ prefix): one variable points the daemon and its clients at the same place.
SOCKET_ENV = "EDGE_AGENT_SOCKET"
STATE_DIR_ENV = "EDGE_AGENT_STATE_DIR"
#: The shipped unit's RuntimeDirectory= and StateDirectory= (edge-agent), as a client sees them.
#: Module constants so tests can point the rule at a temporary folder.
SERVICE_RUNTIME_DIR = Path("/run/edge-agent")
SERVICE_STATE_DIR = Path("/var/lib/edge-agent")


def _first_dir(env: str) -> Path | None:
    value = os.environ.get(env)
    # systemd passes a colon-separated list when several directories are configured.
    return Path(value.split(":")[0]) if value else None


def runtime_dir() -> Path:
    return _first_dir("RUNTIME_DIRECTORY") or Path.cwd() / "run"


def state_dir() -> Path:
    return _first_dir("STATE_DIRECTORY") or Path.cwd() / "state"


def default_socket() -> Path:
    return runtime_dir() / SOCKET_NAME


@dataclass(frozen=True)
class Located:
    """A path a client command uses and how it was chosen, so every message can name both."""

    path: Path
    how: str

    def __str__(self) -> str:
        return f"{self.path} ({self.how})"


def _present(path: Path) -> bool:
    """Whether `path` exists; a directory on the way that this user may not enter counts as
    present (the service's /run/edge-agent is 0750): its error then says "permission denied",
    which tells the operator more than a fallback to a path that is not the service's."""
    try:
        os.stat(path)
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _locate(
    explicit: Path | None,
    what: str,
    *,
    option: str,
    env: str,
    systemd: tuple[str, Path | None],
    service: Path,
    checkout: Path,
) -> Located:
    """The one discovery rule: the option, the settings' variable, systemd's variable (a command
    run inside a unit), the service's `what` if it exists, the checkout's."""
    if explicit is not None:
        return Located(explicit, option)
    if value := os.environ.get(env):
        return Located(Path(value), f"${env}")
    systemd_env, systemd_path = systemd
    if systemd_path is not None:
        return Located(systemd_path, f"${systemd_env}")
    if _present(service):
        return Located(service, f"the service's {what}")
    return Located(checkout, f"the checkout's default; no service {what} at {service}")


def locate_socket(explicit: Path | None = None) -> Located:
    """The daemon socket a client command talks to: --socket, $EDGE_AGENT_SOCKET,
    $RUNTIME_DIRECTORY/edge-agent.sock, the service's /run/edge-agent/edge-agent.sock if it
    exists, else ./run/edge-agent.sock."""
    runtime = _first_dir("RUNTIME_DIRECTORY")
    return _locate(
        explicit,
        "socket",
        option="--socket",
        env=SOCKET_ENV,
        systemd=("RUNTIME_DIRECTORY", runtime / SOCKET_NAME if runtime else None),
        service=SERVICE_RUNTIME_DIR / SOCKET_NAME,
        checkout=Path.cwd() / "run" / SOCKET_NAME,
    )


def locate_state_dir(explicit: Path | None = None) -> Located:
    """The state directory a client command writes for the daemon to read (device profile,
    site accuracy table): --state-dir, $EDGE_AGENT_STATE_DIR, $STATE_DIRECTORY, the service's
    /var/lib/edge-agent if it exists, else ./state."""
    return _locate(
        explicit,
        "state directory",
        option="--state-dir",
        env=STATE_DIR_ENV,
        systemd=("STATE_DIRECTORY", _first_dir("STATE_DIRECTORY")),
        service=SERVICE_STATE_DIR,
        checkout=Path.cwd() / "state",
    )


def default_zoo_dir() -> Path:
    """The shipped zoo: `model_zoo/` next to the `agent` package (checkout or editable install)."""
    return Path(__file__).resolve().parent.parent / "model_zoo"


def shipped_dir() -> Path:
    """What the package ships for the service (`agent/shipped/`: the default policy and the
    unit templates), found the same way in a checkout, an editable install and a wheel. A copy
    of the top-level `policies/default.yaml` and `systemd/` (tests/test_install.py keeps them
    equal), since a wheel carries only what lies inside a package."""
    folder = resources.files("agent") / "shipped"
    # A real directory, not a zip member: the daemon stats and watches the policy file.
    if not isinstance(folder, Path):  # pragma: no cover - only an import from a zip gives one
        raise RuntimeError(f"edge-agent must be installed as files, not imported from {folder}")
    return folder


def default_policy_path() -> Path:
    """The shipped default policy (package data)."""
    return shipped_dir() / "policies" / "default.yaml"


def unit_templates_dir() -> Path:
    """The shipped systemd unit templates (package data)."""
    return shipped_dir() / "systemd"


def config_dir() -> Path | None:
    """The service's configuration directory ($CONFIGURATION_DIRECTORY, from the unit's
    ConfigurationDirectory=), or None outside systemd."""
    return _first_dir("CONFIGURATION_DIRECTORY")


def daemon_policy_path() -> Path:
    """The policy the daemon reads when none is named: under systemd the operator's
    policy.yaml in its configuration directory (`edge-agent systemd install` writes it),
    elsewhere the shipped default."""
    folder = config_dir()
    return folder / POLICY_NAME if folder is not None else default_policy_path()
