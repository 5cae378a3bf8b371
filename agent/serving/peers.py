"""Who is on the other end of a connection: the peer's uid (SO_PEERCRED, put in the scope by
the protocol) and whether it is an admin: root, the daemon's own uid or one of `admin_uids`."""

from __future__ import annotations

import os
from typing import Any

from starlette.types import Scope

from agent.settings import Settings


def peer_uid(scope: Scope) -> int | None:
    state = scope.get("state") or {}
    uid = state.get("peer_uid")
    return uid if isinstance(uid, int) else None


def is_admin(uid: int | None, settings: Settings) -> bool:
    return uid is not None and uid in {0, os.getuid(), *settings.admin_uids}


def hide_paths(value: Any, paths: list[str]) -> Any:
    """`value` (a status body) with every string that names one of `paths` cut to the path's
    last part: what a non-admin peer sees. The folders and files a daemon reads say where
    secrets or writable spots may be, and an error about a file must not point at it."""
    if isinstance(value, dict):
        return {k: hide_paths(v, paths) for k, v in value.items()}
    if isinstance(value, list):
        return [hide_paths(v, paths) for v in value]
    if isinstance(value, str):
        for path in paths:
            if path and path in value:
                value = value.replace(path, os.path.basename(path.rstrip("/")) or "…")
        return value
    return value
