"""The live device reading: psutil first, the kernel's sysfs files where psutil finds nothing.

Every sensor may be absent (None). A read that raises keeps the field's last value, names it
in `Snapshot.stale` and is logged once until it recovers, so a flaky driver neither crashes the
daemon's telemetry job nor floods the journal.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil
import structlog

from agent.telemetry.snapshot import Snapshot

log = structlog.get_logger(__name__)

# Disabled thermal zones and some hwmon drivers report sentinels such as -273 C or 0xFFFF.
PLAUSIBLE_C = (-40.0, 150.0)
# Battery statuses (sysfs `status`) that mean the supply is plugged in.
ON_AC_STATUSES = {"Charging", "Full", "Not charging"}

Reading = dict[str, Any]


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:  # missing, or a disabled sensor answering EIO/ENODATA: absent, not an error
        return None


def _read_number(path: Path) -> float | None:
    text = _read_text(path)
    try:
        return float(text) if text else None
    except ValueError:
        return None


def _plausible(celsius: float | None) -> bool:
    return celsius is not None and math.isfinite(celsius) and PLAUSIBLE_C[0] < celsius <= PLAUSIBLE_C[1]


def read_thermal_zones(sysfs_root: Path) -> float | None:
    """The hottest thermal zone in C: what the kernel throttles on when psutil finds no hwmon chip."""
    temps = [
        value / 1000.0
        for path in (sysfs_root / "class" / "thermal").glob("thermal_zone*/temp")
        if (value := _read_number(path)) is not None and _plausible(value / 1000.0)
    ]
    return round(max(temps), 1) if temps else None


def read_power_supply(sysfs_root: Path) -> tuple[float | None, bool | None]:
    """(battery %, on AC) from /sys/class/power_supply. A supply with a `capacity` (or of type
    Battery) is a battery; one with an `online` file is an adapter, and its state wins over the
    battery's `status` because a full battery on mains may report "Unknown"."""
    root = sysfs_root / "class" / "power_supply"
    capacities: list[float] = []
    statuses: list[str] = []
    online: list[bool] = []
    supplies = sorted(root.iterdir()) if root.is_dir() else []
    for supply in supplies:
        if _read_text(supply / "scope") == "Device":
            continue  # a wireless mouse's or headset's battery, not the one powering us
        kind = _read_text(supply / "type")
        capacity = _read_number(supply / "capacity")
        if kind == "Battery" or (kind is None and capacity is not None):
            if capacity is not None:
                capacities.append(min(100.0, max(0.0, capacity)))
            if status := _read_text(supply / "status"):
                statuses.append(status)
        elif (state := _read_number(supply / "online")) is not None:
            online.append(state == 1)
    battery = round(sum(capacities) / len(capacities), 1) if capacities else None
    on_ac: bool | None = None
    if online:
        on_ac = any(online)
    elif "Discharging" in statuses:
        on_ac = False
    elif any(s in ON_AC_STATUSES for s in statuses):
        on_ac = True
    return battery, on_ac


def _cpu_times() -> Sequence[Any]:
    return psutil.cpu_times(percpu=True)


def _busy_and_total(times: Any) -> tuple[float, float]:
    """Busy and total jiffies of one CPU, as psutil counts them (guest time is already in user)."""
    total = sum(times) - getattr(times, "guest", 0.0) - getattr(times, "guest_nice", 0.0)
    return total - times.idle - getattr(times, "iowait", 0.0), total


class PsutilSource:
    """Reads the device through psutil, with sysfs fallbacks under `sysfs_root`.

    CPU % is measured from this source's own `cpu_times` baseline rather than
    `psutil.cpu_percent(interval=None)`, whose baseline is per calling thread and shared by
    every caller in the process: a scheduler job landing on a fresh pool thread would read a
    meaningless 0.0. The baseline is taken at construction, so the first `read` already measures.
    The psutil functions are parameters so tests can simulate missing or failing sensors."""

    def __init__(
        self,
        sysfs_root: Path = Path("/sys"),
        *,
        cpu_times: Callable[[], Sequence[Any]] = _cpu_times,
        getloadavg: Callable[[], tuple[float, float, float]] = psutil.getloadavg,
        cpu_freq: Callable[[], Any] = psutil.cpu_freq,
        sensors_temperatures: Callable[[], dict[str, list[Any]]] = psutil.sensors_temperatures,
        sensors_battery: Callable[[], Any] = psutil.sensors_battery,
        virtual_memory: Callable[[], Any] = psutil.virtual_memory,
    ) -> None:
        self.sysfs_root = sysfs_root
        self._cpu_times = cpu_times
        self._getloadavg = getloadavg
        self._cpu_freq = cpu_freq
        self._sensors_temperatures = sensors_temperatures
        self._sensors_battery = sensors_battery
        self._virtual_memory = virtual_memory
        self._probes: list[tuple[tuple[str, ...], Callable[[], Reading]]] = [
            (("cpu_percent", "per_cpu_percent"), self._cpu),
            (("load_avg_1m",), lambda: {"load_avg_1m": round(self._getloadavg()[0], 2)}),
            (("cpu_freq_mhz",), self._freq),
            (("temperature_c",), self._temperature),
            (("battery_percent", "on_ac"), self._power),
            (("memory_percent",), lambda: {"memory_percent": float(self._virtual_memory().percent)}),
        ]
        self._last: Reading = {name: None for names, _ in self._probes for name in names}
        self._last["per_cpu_percent"] = ()
        self._failing: set[str] = set()
        self._baseline: list[tuple[float, float]] | None = None
        try:
            self._baseline = [_busy_and_total(t) for t in self._cpu_times()]
        except Exception:  # the first read reports and logs it
            self._baseline = None

    def read(self, now: float) -> Snapshot:
        """One reading; never raises. `now` is the wall-clock time stamped on the snapshot."""
        stale: list[str] = []
        for names, probe in self._probes:
            try:
                self._last.update(probe())
            except Exception as exc:  # a driver can fail in any way; the other sensors still count
                stale.extend(names)
                self._failed(names, exc)
            else:
                self._recovered(names)
        return Snapshot(time=now, **self._last, stale=tuple(stale))

    def _failed(self, names: tuple[str, ...], exc: Exception) -> None:
        for name in names:
            if name not in self._failing:
                self._failing.add(name)
                log.warning("telemetry_read_failed", field=name, error=f"{type(exc).__name__}: {exc}")

    def _recovered(self, names: tuple[str, ...]) -> None:
        for name in names:
            if name in self._failing:
                self._failing.discard(name)
                log.info("telemetry_read_recovered", field=name)

    def _cpu(self) -> Reading:
        current = [_busy_and_total(t) for t in self._cpu_times()]
        previous, self._baseline = self._baseline, current
        if previous is None or len(previous) != len(current):
            return {}  # first reading, or a core came or went: nothing to measure against yet
        per_cpu: list[float] = []
        busy_sum = total_sum = 0.0
        for (busy0, total0), (busy1, total1) in zip(previous, current, strict=True):
            busy, total = max(0.0, busy1 - busy0), total1 - total0
            busy_sum, total_sum = busy_sum + busy, total_sum + total
            per_cpu.append(round(min(100.0, 100.0 * busy / total), 1) if total > 0 else 0.0)
        if total_sum <= 0:
            self._baseline = previous  # read twice within one clock tick: measure over a longer span next time
            return {}
        return {"cpu_percent": round(min(100.0, 100.0 * busy_sum / total_sum), 1), "per_cpu_percent": tuple(per_cpu)}

    def _freq(self) -> Reading:
        freq = self._cpu_freq()
        return {"cpu_freq_mhz": round(float(freq.current), 1) if freq is not None and freq.current else None}

    def _temperature(self) -> Reading:
        readings = [t.current for sensors in (self._sensors_temperatures() or {}).values() for t in sensors]
        # The hottest of all sensors, not a guessed "CPU" chip: names differ on every board, and
        # throttling on whichever part is hottest is the safe side.
        plausible = [float(c) for c in readings if _plausible(c)]
        celsius = round(max(plausible), 1) if plausible else read_thermal_zones(self.sysfs_root)
        return {"temperature_c": celsius}

    def _power(self) -> Reading:
        battery = self._sensors_battery()
        percent = min(100.0, max(0.0, round(float(battery.percent), 1))) if battery is not None else None
        on_ac = battery.power_plugged if battery is not None else None
        if percent is None or on_ac is None:
            sys_percent, sys_on_ac = read_power_supply(self.sysfs_root)
            percent = sys_percent if percent is None else percent
            on_ac = sys_on_ac if on_ac is None else bool(on_ac)
        return {"battery_percent": percent, "on_ac": on_ac}
