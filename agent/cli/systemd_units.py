"""The systemd units for this installation: the shipped templates (`agent/shipped/systemd`, a
copy of `systemd/`) with ExecStart= set to this venv's `edge-agent`, where `edge-agent systemd
install` puts each file, and the commented default config file. Pure functions of their
arguments; reading and writing files is the CLI's job."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePath, PurePosixPath
from typing import Any

import yaml

from agent.errors import AgentError
from agent.paths import POLICY_NAME, SOCKET_NAME
from agent.settings import LIVE_SETTINGS

EXEC_PLACEHOLDER = "@EXEC@"
ENTRY_POINT = "edge-agent"
SERVICE = "edge-agent.service"
SOCKET = "edge-agent.socket"
#: The opt-in TCP metrics listener (socket activation, so the service itself keeps no network).
METRICS_SOCKET = "edge-agent-metrics.socket"
SYSUSERS = "edge-agent.sysusers"
#: The daemon's default socket under the unit ($RUNTIME_DIRECTORY with RuntimeDirectory=edge-agent),
#: which edge-agent.socket's ListenStream= must name.
UNIT_SOCKET_PATH = PurePosixPath("/run/edge-agent") / SOCKET_NAME
#: Where the service unit's ExecStart= (`--config %E/edge-agent/config.yaml`) looks, below the prefix.
CONFIG_FILE = PurePosixPath("etc/edge-agent/config.yaml")
#: The daemon's policy under the unit: $CONFIGURATION_DIRECTORY/policy.yaml (ConfigurationDirectory=edge-agent).
POLICY_FILE = CONFIG_FILE.parent / POLICY_NAME
#: What the hardening makes invisible to the service: a venv below one of these cannot be started.
HIDDEN_BY_SANDBOX = {
    "/home": "ProtectHome=yes",
    "/root": "ProtectHome=yes",
    "/run/user": "ProtectHome=yes",
    "/tmp": "PrivateTmp=yes",
    "/var/tmp": "PrivateTmp=yes",
}


@dataclass(frozen=True)
class UnitFile:
    """One installed file: its template's name and its path below the install prefix."""

    template: str
    target: PurePosixPath
    #: The [Install] WantedBy= target, for the symlink `systemctl enable` makes; None: not enabled.
    wanted_by: str | None = None
    #: Installed, but enabled only by the operator (`install --enable` leaves it alone).
    opt_in: bool = False


# Local admin files, hence /etc (never /usr, which a package manager owns and which may be
# read-only): units in /etc/systemd/system, the user in /etc/sysusers.d.
UNIT_FILES: tuple[UnitFile, ...] = (
    UnitFile(SERVICE, PurePosixPath("etc/systemd/system") / SERVICE, "multi-user.target"),
    UnitFile(SOCKET, PurePosixPath("etc/systemd/system") / SOCKET, "sockets.target"),
    UnitFile(METRICS_SOCKET, PurePosixPath("etc/systemd/system") / METRICS_SOCKET, "sockets.target", opt_in=True),
    UnitFile(SYSUSERS, PurePosixPath("etc/sysusers.d/edge-agent.conf")),
)

#: Settings whose meaning under the unit is worth a line in the default config file.
_UNIT_NOTES = {
    "socket": "Under systemd: /run/edge-agent/edge-agent.sock; with edge-agent.socket, its ListenStream= decides.",
    "state_dir": "Under systemd: /var/lib/edge-agent (StateDirectory=), the only persistent place it may write.",
    "zoo": "Default: the model_zoo installed with the package. Must be readable by user edge-agent.",
    "policy": "Under systemd: $CONFIGURATION_DIRECTORY/policy.yaml, which the installer writes (never overwriting it).",
    "metrics_listen": "Under systemd, enable edge-agent-metrics.socket instead: the service has no network of its own.",
    "drain_timeout_s": "Keep below the unit's TimeoutStopSec=30s, or raise that in a drop-in too.",
    "trusted_keys": "e.g. [/etc/edge-agent/keys/ops.pub]; each must be readable by user edge-agent.",
}


def unit_file(template: str) -> UnitFile:
    """The installed file made from `template` (e.g. "edge-agent.socket")."""
    for unit in UNIT_FILES:
        if unit.template == template:
            return unit
    raise KeyError(template)


def entry_point(executable: str | Path) -> Path:
    """The `edge-agent` script next to the running interpreter, i.e. in the venv's bin/.
    Made absolute but not resolved: a venv's python is a symlink out of the venv."""
    return Path(os.path.abspath(executable)).parent / ENTRY_POINT


def exec_word(path: Path) -> str:
    """`path` as the first word of ExecStart=: absolute, `%` and `$` escaped (systemd would
    expand them as specifiers and variables), quoted when it contains blanks or quotes."""
    if not path.is_absolute():
        raise AgentError(f"ExecStart= needs an absolute path, got {path}")
    text = str(path)
    if any(ord(c) < 32 for c in text):
        raise AgentError(f"{path!r}: control characters cannot be written to a unit file")
    text = text.replace("%", "%%").replace("$", "$$")
    if re.search(r"[\s\"'\\;]", text):
        text = '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return text


def hidden_by_sandbox(path: Path) -> str | None:
    """The hardening option that hides `path` from the service, or None. A venv in a home
    directory or /tmp passes every check and then fails to start with status=203/EXEC."""
    for root, option in HIDDEN_BY_SANDBOX.items():
        if path == Path(root) or path.is_relative_to(root):
            return f"{option} hides {root}"
    return None


def render(unit: UnitFile, template: str, executable: Path) -> str:
    """The text to install for `unit`: the service gets ExecStart= pointed at `executable`;
    the others are installed as they are."""
    if unit.template != SERVICE:
        return template
    if EXEC_PLACEHOLDER not in template:
        raise AgentError(f"{unit.template}: template has no {EXEC_PLACEHOLDER} placeholder to replace")
    return template.replace(EXEC_PLACEHOLDER, exec_word(executable))


def enable_links(units: tuple[UnitFile, ...] = UNIT_FILES) -> list[tuple[PurePosixPath, PurePosixPath]]:
    """(link below the prefix, absolute target) pairs: the symlinks `systemctl enable` makes
    from [Install] WantedBy=, so an image can be built with the units enabled but no systemd running."""
    links = []
    for unit in units:
        if unit.wanted_by is None or unit.opt_in:
            continue
        wants = unit.target.parent / f"{unit.wanted_by}.wants" / unit.target.name
        links.append((wants, PurePosixPath("/") / unit.target))
    return links


def _yaml_value(name: str, value: Any) -> str:
    if name.endswith("_mode") and isinstance(value, int):
        return f"0{value:o}"  # YAML 1.1 octal, as chmod reads it
    if isinstance(value, PurePath):
        value = str(value)
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def _default(name: str, info: Any, computed: Mapping[str, Any]) -> Any:
    if name in computed:
        return computed[name]
    factory = getattr(info, "default_factory", None)
    if factory is None:
        return info.default
    return factory() if factory in (list, dict) else None


def render_config(fields: Mapping[str, Any], computed: Mapping[str, Any]) -> str:
    """A default config file in which every setting is present but commented out, so the
    daemon runs on its defaults and an admin sees what can be set. `fields` is
    `Settings.model_fields` (pydantic FieldInfo), so the file cannot drift from the code;
    `computed` holds what the service will compute at start for defaults that are not constants."""
    lines = [
        "# edge-agent daemon settings (YAML). Every key is optional: uncomment one to change it.",
        "# EDGE_AGENT_<KEY> environment variables (Environment= in a drop-in) win over this file.",
        f"# `systemctl reload edge-agent` applies {', '.join(sorted(LIVE_SETTINGS))};",
        "# the others need `systemctl restart edge-agent`.",
    ]
    for name, info in fields.items():
        lines.append("")
        for note in (getattr(info, "description", None), _UNIT_NOTES.get(name)):
            if note:
                lines.append(f"# {note}")
        value = _default(name, info, computed)
        lines.append(
            f"#{name}: {_yaml_value(name, value)}"
            if value is not None or info.default is None
            else f"# ({name}: computed at start)"
        )
    return "\n".join(lines) + "\n"
