"""The pin file: a maintenance pin survives a restart (`$STATE_DIRECTORY/pin.json`)."""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import structlog

from agent.errors import AgentError
from agent.private_files import private_dir, read_private, write_private
from agent.serving.priority import as_worker
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


class PinWriter:
    """Writes the pin file in one thread of its own: the write's fsync may take a busy disk
    100 ms, which the event loop (an admin's pin, everyone's status) must not wait for; one
    thread keeps the writes in order. Each outcome goes to `wrote(name, error or None)` (the
    state directory reports a failure once)."""

    def __init__(self, path: Path, wrote: Callable[[str, BaseException | None], None]) -> None:
        self.path = path
        self._wrote = wrote
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="pin-writer", initializer=as_worker)
        self._last: Future[None] = Future()
        self._last.set_result(None)

    def save(self, pin: Pin | None) -> None:
        """Write `pin` as it is now (None removes the file), after the writes before it."""
        self._last = self._thread.submit(self._write, pin)

    async def saved(self) -> None:
        """Until the last write is done: an admin's pin is answered once it would survive a
        crash, and the loop serves everyone else meanwhile."""
        await asyncio.wrap_future(self._last)

    def close(self) -> None:
        self._thread.shutdown(wait=True)

    def _write(self, pin: Pin | None) -> None:
        try:
            save_pin(self.path, pin)
        except (OSError, AgentError) as exc:
            self._wrote(self.path.name, exc)
        else:
            self._wrote(self.path.name, None)
