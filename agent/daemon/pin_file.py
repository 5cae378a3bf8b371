"""The pin file: a maintenance pin survives a restart (`$STATE_DIRECTORY/pin.json`)."""

from __future__ import annotations

import json
from pathlib import Path

import structlog

from agent.errors import AgentError
from agent.values import Config, Pin

log = structlog.get_logger(__name__)


def save_pin(path: Path, pin: Pin | None) -> None:
    """Write `pin` atomically, or remove the file when there is none; a failure is logged."""
    try:
        if pin is None:
            path.unlink(missing_ok=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"config": str(pin.config), "until": pin.until, "reason": pin.reason}))
        tmp.replace(path)
    except OSError as exc:
        log.warning("pin_not_saved", path=str(path), error=str(exc))


def load_pin(path: Path) -> Pin | None:
    """The saved pin, or None when there is none or the file is unusable (logged)."""
    try:
        saved = json.loads(path.read_text())
        return Pin(Config.parse(saved["config"]), float(saved["until"]), str(saved["reason"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, AgentError) as exc:
        log.warning("pin_file_invalid", path=str(path), error=str(exc))
        return None
