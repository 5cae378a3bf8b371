"""The telemetry snapshot: what the controller and the policy rules see of the device."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Snapshot:
    """One reading of the device. Every sensor may be absent (None); `stale` names the
    fields whose last read failed and that keep their previous value."""

    time: float  # wall clock, seconds since the epoch
    cpu_percent: float | None = None  # total, 0..100
    per_cpu_percent: tuple[float, ...] = ()
    load_avg_1m: float | None = None
    cpu_freq_mhz: float | None = None
    temperature_c: float | None = None  # hottest CPU/SoC sensor
    battery_percent: float | None = None
    on_ac: bool | None = None  # None: unknown (no power supply information)
    memory_percent: float | None = None
    stale: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        for key in ("per_cpu_percent", "stale"):
            if key in known and known[key] is not None:
                known[key] = tuple(known[key])
        return cls(**known)
