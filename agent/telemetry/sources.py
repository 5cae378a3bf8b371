"""What the controller sees of the device: a `TelemetrySource` turns the clock into a `Snapshot`.

Three sources, chosen by `Settings.telemetry_source`: the live device (`PsutilSource`), the live
device with an operator's override file merged over it (`FileOverrideSource`, to rehearse a
hot or unplugged gateway) and a recorded trace replayed in real time (`TraceSource`). None of
them raises from `read`: the daemon's telemetry job must keep ticking whatever a sensor does.
A read can still *block* (a hung sensor driver, an override path that became a FIFO), so the
daemon wraps its source in `GuardedSource`, which gives every read a deadline.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import structlog

from agent.errors import AgentError
from agent.telemetry.formats import (
    MAX_OVERRIDE_BYTES,
    InvalidOverride,
    TraceEntry,
    parse_override,
    read_trace,
    trace_line,
)
from agent.telemetry.psutil_reader import PsutilSource, read_power_supply, read_thermal_zones
from agent.telemetry.snapshot import Snapshot

if TYPE_CHECKING:
    from agent.settings import Settings

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


#: The longest a telemetry read may take before its last reading is reported stale instead.
MAX_READ_WAIT_S = 1.0
#: Every field a reading carries: all of them are stale while the source itself is stuck.
READING_FIELDS = tuple(name for name in Snapshot.__dataclass_fields__ if name not in ("time", "stale"))


class GuardedSource:
    """`base.read` in a thread of its own, waited for at most half the sampling interval (at
    most `MAX_READ_WAIT_S`), so a read that blocks cannot stall the telemetry job, the
    scheduler's threads (whose exit the interpreter waits for) or the daemon's start.

    A read past its deadline, or one that raises, yields the last good reading restamped `now`
    with every field stale, logged once per episode. Only one read is ever in flight: a stuck
    one is waited on at each later call (and used once it returns) rather than joined by a
    second thread on the same, not thread-safe, source, so stuck threads never pile up.
    """

    def __init__(self, base: TelemetrySource, interval_s: float) -> None:
        self.base = base
        self.timeout_s = min(MAX_READ_WAIT_S, interval_s / 2)
        self._last = Snapshot(time=0.0)
        self._pending: Future[Snapshot] | None = None
        self._failing: str | None = None

    def read(self, now: float) -> Snapshot:
        if self._pending is None:
            self._pending = self._start(now)
        try:
            snapshot = self._pending.result(timeout=self.timeout_s)
        except TimeoutError:
            return self._stale(now, f"no reading within {self.timeout_s:g} s; the read is still blocked")
        except Exception as exc:  # a source that breaks its never-raise promise
            self._pending = None
            return self._stale(now, f"{type(exc).__name__}: {exc}")
        self._pending = None
        if self._failing is not None:
            log.info("telemetry_source_recovered", was=self._failing)
            self._failing = None
        self._last = replace(snapshot, time=now)  # a late reading is stamped when it is used
        return self._last

    def _start(self, now: float) -> Future[Snapshot]:
        future: Future[Snapshot] = Future()

        def run() -> None:
            try:
                future.set_result(self.base.read(now))
            except Exception as exc:
                future.set_exception(exc)

        # A daemon thread: one stuck in the kernel must not hold up the process's exit.
        threading.Thread(target=run, name="telemetry-read", daemon=True).start()
        return future

    def _stale(self, now: float, error: str) -> Snapshot:
        if error != self._failing:
            self._failing = error
            log.warning("telemetry_source_failed", error=error, kept_from=self._last.time or None)
        return replace(self._last, time=now, stale=READING_FIELDS)


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
    "GuardedSource",
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
