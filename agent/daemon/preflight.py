"""Checks and settings before the daemon starts: its descriptor limit and its policy file."""

from __future__ import annotations

import resource
from pathlib import Path

import structlog

from agent.paths import POLICY_NAME

log = structlog.get_logger(__name__)


def raise_fd_limit() -> None:
    """Each connection holds a descriptor, and the usual soft limit (1024) is far below the hard
    one; nothing here uses select(), so take the hard limit, as systemd advises such programs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == hard:
        return
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError) as exc:
        log.warning("fd_limit_not_raised", soft=soft, hard=hard, error=str(exc))
        return
    log.info("fd_limit_raised", old=soft, new=hard)


def policy_file_problem(path: Path) -> str | None:
    """Why the daemon cannot start on the policy file `path`, or None. A missing policy is an
    error, not a silent fallback to the built-in one (which has no rules): the operator named
    it, or under systemd the service's configuration directory holds it."""
    try:
        path.open("rb").close()
    except OSError as exc:
        return (
            f"{path}: cannot open the policy file ({exc.strerror}). Name an existing one (--policy, "
            f"EDGE_AGENT_POLICY or policy: in the config); the service's default, "
            f"$CONFIGURATION_DIRECTORY/{POLICY_NAME}, is written by `edge-agent systemd install`"
        )
    return None
