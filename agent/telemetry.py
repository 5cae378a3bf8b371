"""What the controller sees of the device: a `TelemetrySource` turns the clock into a `Snapshot`.

Three sources, chosen by `Settings.telemetry_source`: the live device (`PsutilSource`), the live
device with an operator's override file merged over it (`FileOverrideSource`, to rehearse a
hot or unplugged gateway) and a recorded trace replayed in real time (`TraceSource`). None of
them raises from `read`: the daemon's telemetry job must keep ticking whatever a sensor does.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from agent.errors import AgentError
from agent.snapshot import Snapshot
from agent.telemetry_formats import (
    MAX_OVERRIDE_BYTES,
    InvalidOverride,
    TraceEntry,
    parse_override,
    read_trace,
    trace_line,
)
from agent.telemetry_psutil import PsutilSource, read_power_supply, read_thermal_zones

if TYPE_CHECKING:
    from agent.config import Settings

log = structlog.get_logger(__name__)
_UNREAD = object()  # FileOverrideSource has not read the file, or could not


@runtime_checkable
class TelemetrySource(Protocol):
    def read(self, now: float) -> Snapshot:
        """One reading stamped `now` (wall clock); fast, and never raises."""
        ...


class FileOverrideSource:
    """`base`'s reading with the keys of a JSON file merged over it. The file is read at every
    reading (it is small), so an edit takes effect on the next tick; a missing file is no
    override, an invalid one is no override and is logged once per distinct error."""

    def __init__(self, path: Path, base: TelemetrySource) -> None:
        self.path = path
        self.base = base
        self._raw: object = _UNREAD  # the bytes `_override` was parsed from; None: no file
        self._override: dict[str, Any] = {}
        self._error: str | None = None

    def read(self, now: float) -> Snapshot:
        snapshot = self.base.read(now)
        override = dict(self._load())
        if not override:
            return snapshot
        # An overridden field is fresh whatever the sensor did, unless the file itself says stale.
        stale = override.pop("stale", tuple(f for f in snapshot.stale if f not in override))
        return replace(snapshot, **override, stale=stale)

    def _load(self) -> dict[str, Any]:
        try:
            with self.path.open("rb") as f:
                raw: bytes | None = f.read(MAX_OVERRIDE_BYTES + 1)
        except FileNotFoundError:
            raw = None
        except OSError as exc:  # unreadable (permissions, a directory): keep trying each tick
            self._raw, self._override = _UNREAD, {}
            self._invalid(f"cannot read: {exc.strerror or exc}")
            return self._override
        if raw == self._raw:
            return self._override
        self._raw = raw
        if raw is None:
            if self._override:
                log.info("telemetry_override_cleared", path=str(self.path))
            self._override, self._error = {}, None
            return self._override
        try:
            self._override = parse_override(raw)
        except InvalidOverride as exc:
            self._override = {}
            self._invalid(str(exc))
        else:
            self._error = None
            log.info("telemetry_override_loaded", path=str(self.path), **self._override)
        return self._override

    def _invalid(self, error: str) -> None:
        if error != self._error:
            self._error = error
            log.warning("telemetry_override_invalid", path=str(self.path), error=error)


class TraceSource:
    """Replays a JSONL trace in real time from the first `read`: line i is current once
    `now - start >= time_i - time_0`. Snapshots are restamped `now` so the controller's timers
    run on the daemon's clock; `entries()` keeps the recorded times for offline simulation.
    After the last line it holds that line, or with `loop` starts over one mean step later."""

    def __init__(self, path: Path, loop: bool = False) -> None:
        self.path = path
        self.loop = loop
        self._entries = read_trace(path)
        first = self._entries[0].snapshot.time
        self._offsets = [e.snapshot.time - first for e in self._entries]
        span, steps = self._offsets[-1], len(self._offsets) - 1
        self._period = span + span / steps if steps else 0.0
        self._start: float | None = None

    def entries(self) -> list[TraceEntry]:
        return list(self._entries)

    def entry_at(self, now: float) -> TraceEntry:
        """The recorded entry current at `now`; the first call starts the replay."""
        if self._start is None:
            self._start = now
        elapsed = max(0.0, now - self._start)  # a clock stepped back replays from the start
        if self.loop and self._period > 0:
            elapsed %= self._period
        return self._entries[max(0, bisect_right(self._offsets, elapsed) - 1)]

    def read(self, now: float) -> Snapshot:
        return replace(self.entry_at(now).snapshot, time=now)


def make_source(settings: Settings) -> TelemetrySource:
    """The source `settings.telemetry_source` names; AgentError if its file is not configured."""
    if settings.telemetry_source == "psutil":
        return PsutilSource(settings.sysfs_root)
    if settings.telemetry_source == "file":
        if settings.telemetry_file is None:
            raise AgentError("telemetry_source is 'file' but telemetry_file is not set (EDGE_AGENT_TELEMETRY_FILE)")
        return FileOverrideSource(settings.telemetry_file, PsutilSource(settings.sysfs_root))
    if settings.telemetry_trace is None:
        raise AgentError("telemetry_source is 'trace' but telemetry_trace is not set (EDGE_AGENT_TELEMETRY_TRACE)")
    return TraceSource(settings.telemetry_trace)


__all__ = [
    "FileOverrideSource",
    "PsutilSource",
    "Snapshot",
    "TelemetrySource",
    "TraceEntry",
    "TraceSource",
    "make_source",
    "read_power_supply",
    "read_thermal_zones",
    "read_trace",
    "trace_line",
]
