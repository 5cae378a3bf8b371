"""The daemon's wall clock, and a watch for its steps.

Every span the daemon measures (the controller's dwell, the latency windows, a pin's time
left, an unhealthy variant's cooldown, uptime) runs on `time.monotonic()`, which no step of
the wall clock moves. The wall clock is read only for what is about the time of day or must
outlive the process: `time_between` policy rules, timestamps in status and logs, a pin's
`until` in pin.json. A gateway without a real-time clock boots at its last shutdown (or at
1970) and NTP steps it later, by hours: `StepWatch` notices such a step, so that a pin's
`until` is restated on the new clock while its time left is kept.

`WallClock(offset_file)` adds the seconds written in that file (the `wall_clock_offset_file`
setting, for tests): a test steps the daemon's wall clock without root and without touching
the machine's.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

#: A change of (wall - monotonic) larger than this between two checks is a step, not drift:
#: NTP slews at most 0.5 ms per second, and the checks are about a second apart.
STEP_TOLERANCE_S = 2.0


class WallClock:
    """`time.time()`, plus the offset in `offset_file` when one is given (for tests)."""

    def __init__(self, offset_file: Path | None = None) -> None:
        self.offset_file = offset_file
        self._error: str | None = None

    def __call__(self) -> float:
        return time.time() + (self._offset() if self.offset_file is not None else 0.0)

    def _offset(self) -> float:
        """The file's number of seconds; 0 when it is absent or unreadable (logged once per error)."""
        assert self.offset_file is not None
        try:
            text = self.offset_file.read_text(encoding="ascii").strip()
            return float(text) if text else 0.0
        except (OSError, ValueError, UnicodeDecodeError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._error and not isinstance(exc, FileNotFoundError):
                log.warning("wall_clock_offset_invalid", path=str(self.offset_file), error=error)
            self._error = error
            return 0.0


class StepWatch:
    """Finds steps of the wall clock against the monotonic one, checked about once a second."""

    def __init__(
        self,
        wall: Callable[[], float],
        monotonic: Callable[[], float] = time.monotonic,
        tolerance_s: float = STEP_TOLERANCE_S,
    ) -> None:
        self.wall = wall
        self.monotonic = monotonic
        self.tolerance_s = tolerance_s
        self._base = wall() - monotonic()
        self.steps = 0
        self.last_step_s: float | None = None

    def check(self) -> float | None:
        """The step in seconds (negative: back) since the last check, or None when there was none.
        The base follows every check, so slow slewing never adds up to a step."""
        base = self.wall() - self.monotonic()
        step, self._base = base - self._base, base
        if abs(step) <= self.tolerance_s:
            return None
        self.steps += 1
        self.last_step_s = round(step, 1)
        log.warning("wall_clock_stepped", step_s=self.last_step_s, steps=self.steps)
        return step

    def status(self) -> dict[str, object]:
        """For `GET /v1/status`: how often the wall clock stepped while the daemon ran."""
        return {"wall_steps": self.steps, "last_step_s": self.last_step_s}
