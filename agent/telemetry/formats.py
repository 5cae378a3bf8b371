"""The files telemetry reads and writes: the operator's override file and the JSONL trace.

Both cross a boundary (an editor, another machine, a later version), so both are checked by
pydantic models whose fields mirror `Snapshot`; a test keeps the two in step.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from agent.errors import AgentError, validation_message
from agent.telemetry.snapshot import Snapshot

Percent = Annotated[float, Field(ge=0, le=100)]
MAX_OVERRIDE_BYTES = 64 * 1024


class SnapshotValues(BaseModel):
    """Every `Snapshot` field but `time`, all optional. Strict: `"15"` is not a battery level
    and `0` is not `false`, so a typo in an override file is reported rather than guessed."""

    model_config = ConfigDict(strict=True, frozen=True)

    cpu_percent: Percent | None = None
    per_cpu_percent: tuple[Percent, ...] = ()
    load_avg_1m: float | None = Field(default=None, ge=0)
    cpu_freq_mhz: float | None = Field(default=None, ge=0)
    temperature_c: float | None = None
    battery_percent: Percent | None = None
    on_ac: bool | None = None
    memory_percent: Percent | None = None
    stale: tuple[str, ...] = ()

    @field_validator("stale")
    @classmethod
    def _known_fields(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - set(Snapshot.__dataclass_fields__))
        if unknown:
            raise ValueError(f"not snapshot fields: {', '.join(unknown)}")
        return value


class OverrideFile(SnapshotValues):
    """The override file. `time` is accepted, so the output of `telemetry show --json` can be
    edited into one, but ignored: a frozen clock would stall the controller's dwell timers."""

    model_config = ConfigDict(extra="forbid")

    time: float | None = None


class Observed(BaseModel):
    """The daemon's latency window when a trace line was recorded."""

    model_config = ConfigDict(extra="allow", frozen=True)

    config: str
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    count: int = Field(default=0, ge=0)


class TraceLine(SnapshotValues):
    """One line of a trace. Unknown keys are ignored so that older readers replay newer traces."""

    model_config = ConfigDict(extra="ignore")

    time: float
    observed: Observed | None = None


@dataclass(frozen=True)
class TraceEntry:
    snapshot: Snapshot
    observed: dict[str, Any] | None = None


class InvalidOverride(ValueError):
    """The override file cannot be used; the message says why, one line."""


def parse_override(raw: bytes) -> dict[str, Any]:
    """The keys an override file sets, as Snapshot field values; raises InvalidOverride."""
    if len(raw) > MAX_OVERRIDE_BYTES:
        raise InvalidOverride(f"larger than {MAX_OVERRIDE_BYTES} bytes")
    try:
        model = OverrideFile.model_validate_json(raw)
    except ValidationError as exc:
        raise InvalidOverride(validation_message(exc)) from None
    return model.model_dump(exclude_unset=True, exclude={"time"})


def parse_trace_line(line: str | bytes) -> TraceEntry:
    """One trace line; raises pydantic's ValidationError."""
    parsed = TraceLine.model_validate_json(line)
    observed = parsed.observed.model_dump() if parsed.observed is not None else None
    return TraceEntry(Snapshot(**parsed.model_dump(exclude={"observed"})), observed)


def read_trace(path: Path) -> list[TraceEntry]:
    """All entries of a JSONL trace, in time order (stable for equal times)."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentError(f"{path}: cannot read trace: {exc}") from exc
    entries: list[TraceEntry] = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            entries.append(parse_trace_line(line))
        except ValidationError as exc:
            raise AgentError(f"{path}:{lineno}: invalid trace line: {validation_message(exc)}") from None
    if not entries:
        raise AgentError(f"{path}: the trace has no entries")
    return sorted(entries, key=lambda e: e.snapshot.time)


def trace_line(snapshot: Snapshot, observed: dict[str, Any] | None = None) -> str:
    """One JSONL line (no newline) that `read_trace` reads back as the same entry."""
    data = snapshot.as_dict()
    if observed is not None:
        data["observed"] = observed
    return json.dumps(data, separators=(",", ":"))


def observed_from_status(status: dict[str, Any]) -> dict[str, Any]:
    """The `observed` part of a trace line from the daemon's `/v1/status` answer."""
    window = status["window"]
    return {
        "config": status["config"]["current"],
        **{key: window.get(key) for key in ("p50_ms", "p95_ms", "p99_ms")},
        "count": window.get("count", 0),
    }
