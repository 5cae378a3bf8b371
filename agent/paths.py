"""Where the daemon keeps its socket and state: systemd's directories when run as a
service, `./run` and `./state` in a checkout."""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "edge-agent.sock"
DEVICE_PROFILE_NAME = "device-profile.json"


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


def device_profile_path() -> Path:
    return state_dir() / DEVICE_PROFILE_NAME
