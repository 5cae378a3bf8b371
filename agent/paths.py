"""Where things are: the socket and state (systemd's directories when run as a service,
`./run` and `./state` in a checkout), the shipped zoo and the shipped default policy.

A leaf: standard library only, so settings and every CLI command can name a default path
without importing what lives there (the zoo would pull in onnxruntime)."""

from __future__ import annotations

import os
from pathlib import Path

SOCKET_NAME = "edge-agent.sock"
DEVICE_PROFILE_NAME = "device-profile.json"
#: The accuracy table measured on the operator's own images (`edge-agent zoo eval --save`).
SITE_ACCURACY_NAME = "site-accuracy.json"


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


def default_zoo_dir() -> Path:
    """The shipped zoo: `model_zoo/` next to the `agent` package (checkout or editable install)."""
    return Path(__file__).resolve().parent.parent / "model_zoo"


def default_policy_path() -> Path:
    """The shipped `policies/default.yaml` (next to the `agent` package: checkout or editable install)."""
    return Path(__file__).resolve().parent.parent / "policies" / "default.yaml"
