"""The pin file: a maintenance pin survives a restart (`$STATE_DIRECTORY/pin.json`)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import structlog

from agent.errors import AgentError
from agent.private_files import private_dir, read_private, write_private
from agent.values import Config, Pin

log = structlog.get_logger(__name__)


def save_pin(path: Path, pin: Pin | None) -> None:
    """Write `pin` atomically (see `write_private`), or remove the file when there is none.
    OSError or UnsafePath when it cannot: the caller reports it (`agent.daemon.state_dir`)."""
    if pin is None:
        path.unlink(missing_ok=True)
        return
    private_dir(path.parent)
    body = {"config": str(pin.config), "until": pin.until, "reason": pin.reason}
    write_private(path, json.dumps(body).encode())


def load_pin(path: Path) -> Pin | None:
    """The saved pin, or None when there is none or the file is unusable: one log line, which
    says why but never quotes the file (it may not be ours)."""
    try:
        raw = read_private(path)
    except (OSError, AgentError) as exc:
        log.warning("pin_file_invalid", path=str(path), error=str(exc))
        return None
    if raw is None:
        return None
    try:
        saved = json.loads(raw)
        until = float(saved["until"])
        pin = Pin(Config.parse(saved["config"]), until, str(saved["reason"]))
    except (ValueError, KeyError, TypeError, AgentError) as exc:
        log.warning("pin_file_invalid", path=str(path), error=f"not a pin file ({type(exc).__name__})")
        return None
    if not math.isfinite(until):
        log.warning("pin_file_invalid", path=str(path), error="its `until` is not a finite time")
        return None
    return pin
