"""Telemetry as the controller sees it: on a fake sysfs tree, on a machine with no sensors,
with sensors that fail, through the override file and the trace, and from the command line."""

from __future__ import annotations

import json
import os
import socketserver
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace
from typing import Any, NamedTuple

import psutil
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from agent.errors import AgentError
from agent.settings import Settings
from agent.telemetry.formats import SnapshotValues, parse_trace_line, read_trace, trace_line
from agent.telemetry.psutil_reader import PsutilSource, read_power_supply, read_thermal_zones
from agent.telemetry.snapshot import Snapshot
from agent.telemetry.sources import FileOverrideSource, TelemetrySource, TraceSource, make_source

REPO = Path(__file__).resolve().parent.parent
NOW = 1_700_000_000.0


class Times(NamedTuple):
    """A stand-in for psutil's per-CPU `scputimes`."""

    user: float
    system: float
    idle: float
    iowait: float = 0.0


def fake_sysfs(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


HOT_UNPLUGGED = {
    "class/thermal/thermal_zone0/temp": "85000",
    "class/thermal/thermal_zone1/temp": "41000",
    "class/power_supply/BAT0/capacity": "15",
    "class/power_supply/BAT0/status": "Discharging",
    "class/power_supply/AC/online": "0",
}


def no_sensors(**overrides: Callable[..., Any]) -> dict[str, Callable[..., Any]]:
    """psutil functions as on a VM without sensors (this one): nothing to report."""
    probes: dict[str, Callable[..., Any]] = {
        "cpu_times": lambda: [Times(10, 5, 85), Times(20, 5, 75)],
        "getloadavg": lambda: (0.5, 0.4, 0.3),
        "cpu_freq": lambda: None,
        "sensors_temperatures": dict,
        "sensors_battery": lambda: None,
        "virtual_memory": lambda: SimpleNamespace(percent=42.0),
    }
    return {**probes, **overrides}


class Fixed:
    """A base source that always reads the same values."""

    def __init__(self, **values: Any) -> None:
        self.values = values

    def read(self, now: float) -> Snapshot:
        return Snapshot(time=now, **self.values)


# --- PsutilSource and the sysfs fallbacks -------------------------------------------------


def test_fake_sysfs_tree_reports_hot_discharging_battery(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "sys", HOT_UNPLUGGED)
    snap = PsutilSource(root, **no_sensors()).read(NOW)
    assert (snap.temperature_c, snap.battery_percent, snap.on_ac) == (85.0, 15.0, False)
    assert snap.time == NOW and snap.stale == ()


def test_machine_without_sensors_reports_none_not_errors(tmp_path: Path) -> None:
    with structlog.testing.capture_logs() as logs:
        snap = PsutilSource(tmp_path / "empty", **no_sensors()).read(NOW)
    assert (snap.temperature_c, snap.battery_percent, snap.on_ac, snap.cpu_freq_mhz) == (None, None, None, None)
    assert snap.load_avg_1m == 0.5 and snap.memory_percent == 42.0
    assert snap.stale == () and logs == []


def test_real_psutil_on_this_machine_reads_without_errors(tmp_path: Path) -> None:
    source = PsutilSource(tmp_path / "empty")
    time.sleep(0.05)  # let the kernel count a few CPU ticks; there is no event to await for that
    with structlog.testing.capture_logs() as logs:
        snap = source.read(NOW)
    assert snap.stale == () and logs == []
    assert snap.cpu_percent is not None and 0 <= snap.cpu_percent <= 100
    assert len(snap.per_cpu_percent) == psutil.cpu_count()
    assert snap.memory_percent is not None
    if not psutil.sensors_temperatures():  # this VM: no sensors, and the empty sysfs root has none
        assert snap.temperature_c is None
    if psutil.sensors_battery() is None:
        assert snap.battery_percent is None


def test_cpu_percent_is_measured_against_the_sources_own_baseline(tmp_path: Path) -> None:
    samples = iter(
        [
            [Times(0, 0, 100), Times(0, 0, 100)],  # baseline, taken at construction
            [Times(50, 0, 150), Times(0, 0, 200)],  # core 0: 50 busy of 100; core 1: idle
            [Times(50, 0, 150), Times(0, 0, 200)],  # no tick elapsed: keep the last values
            [Times(150, 0, 150), Times(100, 0, 200)],  # both cores fully busy
        ]
    )
    source = PsutilSource(tmp_path, **no_sensors(cpu_times=lambda: next(samples)))
    first = source.read(NOW)
    assert (first.cpu_percent, first.per_cpu_percent) == (25.0, (50.0, 0.0))
    assert source.read(NOW + 0.001).cpu_percent == 25.0
    last = source.read(NOW + 1)
    assert (last.cpu_percent, last.per_cpu_percent) == (100.0, (100.0, 100.0))


def test_hottest_plausible_zone_wins_and_disabled_zones_are_skipped(tmp_path: Path) -> None:
    root = fake_sysfs(
        tmp_path,
        {
            "class/thermal/thermal_zone0/temp": "52500",
            "class/thermal/thermal_zone1/temp": "-273000",  # a disabled zone's sentinel
            "class/thermal/thermal_zone2/temp": "garbage",
            "class/thermal/thermal_zone3/temp": "61250",
        },
    )
    assert read_thermal_zones(root) == 61.2
    assert read_thermal_zones(tmp_path / "nowhere") is None


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({"BAT0/capacity": "80", "BAT0/status": "Charging"}, (80.0, True)),
        ({"BAT0/capacity": "100", "BAT0/status": "Unknown", "ADP1/online": "1"}, (100.0, True)),
        ({"BAT0/capacity": "15", "BAT0/status": "Discharging"}, (15.0, False)),
        ({"BAT0/capacity": "30", "BAT1/capacity": "50", "BAT0/status": "Discharging"}, (40.0, False)),
        ({"AC/online": "1"}, (None, True)),  # a mains-powered gateway without battery
        (
            {"hidpp_battery_0/capacity": "5", "hidpp_battery_0/scope": "Device", "hidpp_battery_0/type": "Battery"},
            (None, None),  # a wireless mouse's battery is not ours
        ),
        ({"BAT0/capacity": "104", "BAT0/type": "Battery", "usb/type": "USB", "usb/online": "0"}, (100.0, False)),
    ],
)
def test_power_supply_reading(tmp_path: Path, files: dict[str, str], expected: tuple[Any, Any]) -> None:
    root = fake_sysfs(tmp_path, {f"class/power_supply/{k}": v for k, v in files.items()})
    assert read_power_supply(root) == expected


def test_psutil_readings_win_over_sysfs_and_gaps_are_filled_from_it(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, HOT_UNPLUGGED)
    shwtemp = SimpleNamespace(label="Package id 0", current=47.0, high=None, critical=None)
    probes = no_sensors(
        sensors_temperatures=lambda: {"coretemp": [shwtemp]},
        sensors_battery=lambda: SimpleNamespace(percent=64.5, secsleft=0, power_plugged=None),
        cpu_freq=lambda: SimpleNamespace(current=1800.0, min=0.0, max=0.0),
    )
    snap = PsutilSource(root, **probes).read(NOW)
    assert (snap.temperature_c, snap.battery_percent, snap.cpu_freq_mhz) == (47.0, 64.5, 1800.0)
    assert snap.on_ac is False  # psutil did not know; sysfs's AC/online did


def test_failing_read_keeps_last_value_marks_it_stale_and_logs_once(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path, HOT_UNPLUGGED)
    broken = {"temperature": False, "memory": False}

    def temperatures() -> dict[str, list[Any]]:
        if broken["temperature"]:
            raise OSError(5, "Input/output error")
        return {}

    def memory() -> SimpleNamespace:
        if broken["memory"]:
            raise RuntimeError("driver gone")
        return SimpleNamespace(percent=42.0)

    source = PsutilSource(root, **no_sensors(sensors_temperatures=temperatures, virtual_memory=memory))
    assert source.read(NOW).temperature_c == 85.0
    broken.update(temperature=True, memory=True)
    with structlog.testing.capture_logs() as logs:
        snaps = [source.read(NOW + i) for i in range(1, 4)]
    assert all(s.temperature_c == 85.0 and s.memory_percent == 42.0 for s in snaps)
    assert all(s.stale == ("temperature_c", "memory_percent") for s in snaps)
    assert snaps[0].battery_percent == 15.0  # the other sensors still count
    failures = [e for e in logs if e["event"] == "telemetry_read_failed"]
    assert [(e["field"], e["log_level"]) for e in failures] == [
        ("temperature_c", "warning"),
        ("memory_percent", "warning"),
    ]
    assert "Input/output error" in failures[0]["error"]

    broken["temperature"] = False
    with structlog.testing.capture_logs() as logs:
        recovered = source.read(NOW + 5)
        broken["temperature"] = True
        source.read(NOW + 6)
    assert recovered.stale == ("memory_percent",)
    assert [(e["event"], e["field"]) for e in logs] == [
        ("telemetry_read_recovered", "temperature_c"),
        ("telemetry_read_failed", "temperature_c"),  # failed again after recovering: logged again
    ]


def test_failing_cpu_times_at_start_leaves_cpu_unknown_and_stale(tmp_path: Path) -> None:
    def cpu_times() -> list[Times]:
        raise PermissionError("/proc/stat")

    with structlog.testing.capture_logs() as logs:
        snap = PsutilSource(tmp_path, **no_sensors(cpu_times=cpu_times)).read(NOW)
    assert (snap.cpu_percent, snap.per_cpu_percent) == (None, ())
    assert snap.stale == ("cpu_percent", "per_cpu_percent")
    assert [e["field"] for e in logs] == ["cpu_percent", "per_cpu_percent"]


# --- FileOverrideSource -------------------------------------------------------------------


def test_override_file_is_merged_over_the_base_reading(tmp_path: Path) -> None:
    path = tmp_path / "override.json"
    path.write_text(json.dumps({"battery_percent": 15, "on_ac": False, "temperature_c": 85}))
    base = Fixed(cpu_percent=30.0, temperature_c=50.0, battery_percent=90.0, on_ac=True, stale=("temperature_c",))
    snap = FileOverrideSource(path, base).read(NOW)
    assert snap == Snapshot(time=NOW, cpu_percent=30.0, temperature_c=85.0, battery_percent=15.0, on_ac=False)


def test_override_edits_apply_at_the_next_read_and_removal_restores_the_base(tmp_path: Path) -> None:
    path = tmp_path / "override.json"
    source = FileOverrideSource(path, Fixed(battery_percent=90.0))
    assert source.read(NOW).battery_percent == 90.0  # no file: no override
    path.write_text('{"battery_percent": 15}')
    assert source.read(NOW).battery_percent == 15.0
    path.write_text('{"battery_percent": 25}')  # same size, maybe same mtime: still seen
    assert source.read(NOW).battery_percent == 25.0
    path.unlink()
    assert source.read(NOW).battery_percent == 90.0


def test_override_can_blank_a_sensor_mark_staleness_and_cannot_freeze_the_clock(tmp_path: Path) -> None:
    path = tmp_path / "override.json"
    path.write_text(json.dumps({"time": 1.0, "temperature_c": None, "stale": ["battery_percent"]}))
    snap = FileOverrideSource(path, Fixed(temperature_c=50.0, battery_percent=90.0)).read(NOW)
    assert (snap.time, snap.temperature_c, snap.stale) == (NOW, None, ("battery_percent",))


def test_show_json_output_is_a_valid_override_file(tmp_path: Path) -> None:
    path = tmp_path / "override.json"
    path.write_text(json.dumps(Snapshot(time=1.0, cpu_percent=99.0, per_cpu_percent=(98.0, 100.0)).as_dict()))
    snap = FileOverrideSource(path, Fixed(cpu_percent=10.0, memory_percent=20.0)).read(NOW)
    assert (snap.time, snap.cpu_percent, snap.memory_percent) == (NOW, 99.0, None)


def test_invalid_override_is_ignored_and_logged_once_per_distinct_error(tmp_path: Path) -> None:
    path = tmp_path / "override.json"
    source = FileOverrideSource(path, Fixed(battery_percent=90.0, on_ac=True))
    with structlog.testing.capture_logs() as logs:
        for content in (
            "{not json",
            "{not json",
            '{"battery": 15}',
            '{"battery_percent": "15"}',
            '{"on_ac": 0}',
            '{"battery_percent": 150}',
            '{"stale": ["nonsense"]}',
            "[15]",
        ):
            path.write_text(content)
            assert source.read(NOW) == Snapshot(time=NOW, battery_percent=90.0, on_ac=True)
            source.read(NOW)
    warnings = [e for e in logs if e["event"] == "telemetry_override_invalid"]
    assert len(warnings) == 7  # the repeated bad JSON once, each other mistake once
    assert "battery" in warnings[1]["error"] and "Extra inputs" in warnings[1]["error"]
    assert all(e["log_level"] == "warning" for e in warnings)


def test_unreadable_override_is_no_override(tmp_path: Path) -> None:
    (tmp_path / "override.json").mkdir()
    with structlog.testing.capture_logs() as logs:
        snap = FileOverrideSource(tmp_path / "override.json", Fixed(battery_percent=90.0)).read(NOW)
    assert snap.battery_percent == 90.0
    assert [e["event"] for e in logs] == ["telemetry_override_invalid"]


# --- traces -------------------------------------------------------------------------------


def write_trace(path: Path, entries: list[tuple[Snapshot, dict[str, Any] | None]]) -> Path:
    path.write_text("".join(trace_line(s, o) + "\n" for s, o in entries))
    return path


OBSERVED = {"config": "full@1", "p50_ms": 20.0, "p95_ms": 35.5, "p99_ms": 41.0, "count": 120}


def test_trace_replays_by_elapsed_time_in_time_order(tmp_path: Path) -> None:
    t0 = 1000.0
    trace = write_trace(
        tmp_path / "trace.jsonl",
        [  # recorded out of order: replay follows the times, not the lines
            (Snapshot(time=t0 + 2, temperature_c=70.0), None),
            (Snapshot(time=t0, temperature_c=50.0), OBSERVED),
            (Snapshot(time=t0 + 1, temperature_c=60.0), None),
        ],
    )
    source = TraceSource(trace)
    readings = {dt: source.read(NOW + dt) for dt in (0, 0.5, 1.0, 1.99, 2.0, 60.0)}
    assert {dt: s.temperature_c for dt, s in readings.items()} == {
        0: 50.0,
        0.5: 50.0,
        1.0: 60.0,
        1.99: 60.0,
        2.0: 70.0,
        60.0: 70.0,  # past the end: the last line holds
    }
    assert all(s.time == NOW + dt for dt, s in readings.items())  # restamped on the reader's clock
    entries = source.entries()
    assert [e.snapshot.time for e in entries] == [t0, t0 + 1, t0 + 2]
    assert entries[0].observed == OBSERVED and entries[1].observed is None


def test_looping_trace_starts_over_one_step_after_the_end(tmp_path: Path) -> None:
    trace = write_trace(
        tmp_path / "trace.jsonl", [(Snapshot(time=float(t), cpu_percent=t * 10.0), None) for t in range(3)]
    )
    source = TraceSource(trace, loop=True)
    assert [source.read(NOW + dt).cpu_percent for dt in (0, 1, 2, 2.9, 3, 4, 7)] == [0, 10, 20, 20, 0, 10, 10]


def test_invalid_or_empty_trace_is_an_agent_error_naming_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(trace_line(Snapshot(time=1.0)) + '\n{"cpu_percent": 5}\n')
    with pytest.raises(AgentError, match=r"bad.jsonl:2: invalid trace line: time"):
        read_trace(bad)
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(AgentError, match="no entries"):
        TraceSource(tmp_path / "empty.jsonl")
    with pytest.raises(AgentError, match="cannot read trace"):
        read_trace(tmp_path / "missing.jsonl")


def test_trace_lines_ignore_keys_from_newer_recorders(tmp_path: Path) -> None:
    entry = parse_trace_line('{"time": 5, "gpu_percent": 3, "observed": {"config": "int8@0.5", "queue": 2}}')
    assert entry.snapshot == Snapshot(time=5.0)
    assert entry.observed == {
        "config": "int8@0.5",
        "p50_ms": None,
        "p95_ms": None,
        "p99_ms": None,
        "count": 0,
        "queue": 2,
    }


percent = st.floats(0, 100, allow_nan=False)
maybe = st.none() | percent


@given(
    snapshot=st.builds(
        Snapshot,
        time=st.floats(0, 4e9, allow_nan=False),
        cpu_percent=maybe,
        per_cpu_percent=st.lists(percent, max_size=8).map(tuple),
        load_avg_1m=st.none() | st.floats(0, 512, allow_nan=False),
        cpu_freq_mhz=st.none() | st.floats(0, 6000, allow_nan=False),
        temperature_c=st.none() | st.floats(-40, 150, allow_nan=False),
        battery_percent=maybe,
        on_ac=st.none() | st.booleans(),
        memory_percent=maybe,
        stale=st.lists(st.sampled_from(["cpu_percent", "temperature_c", "on_ac"]), unique=True).map(tuple),
    ),
    observed=st.none() | st.just(OBSERVED),
)
def test_trace_line_round_trips(snapshot: Snapshot, observed: dict[str, Any] | None) -> None:
    entry = parse_trace_line(trace_line(snapshot, observed))
    assert (entry.snapshot, entry.observed) == (snapshot, observed)


def test_file_schemas_name_every_snapshot_field() -> None:
    assert set(SnapshotValues.model_fields) | {"time"} == set(Snapshot.__dataclass_fields__)


# --- make_source --------------------------------------------------------------------------


def test_make_source_follows_settings(tmp_path: Path) -> None:
    psutil_source = make_source(Settings(sysfs_root=tmp_path))
    assert isinstance(psutil_source, PsutilSource) and psutil_source.sysfs_root == tmp_path
    file_source = make_source(
        Settings(telemetry_source="file", telemetry_file=tmp_path / "o.json", sysfs_root=tmp_path)
    )
    assert isinstance(file_source, FileOverrideSource) and isinstance(file_source.base, PsutilSource)
    assert file_source.base.sysfs_root == tmp_path
    trace = write_trace(tmp_path / "t.jsonl", [(Snapshot(time=1.0), None)])
    trace_source = make_source(Settings(telemetry_source="trace", telemetry_trace=trace))
    assert isinstance(trace_source, TraceSource)
    assert all(isinstance(s, TelemetrySource) for s in (psutil_source, file_source, trace_source))


@pytest.mark.parametrize(("kind", "setting"), [("file", "telemetry_file"), ("trace", "telemetry_trace")])
def test_make_source_without_its_file_is_a_clear_error(kind: str, setting: str) -> None:
    with pytest.raises(AgentError, match=setting):
        make_source(Settings(telemetry_source=kind))


# --- the command line ---------------------------------------------------------------------


def cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", "telemetry", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200"},
        cwd=REPO,
    )


@pytest.mark.daemon
def test_show_json_prints_one_snapshot(tmp_path: Path) -> None:
    root = fake_sysfs(tmp_path / "sys", HOT_UNPLUGGED)
    result = cli("show", "--json", "--sysfs-root", str(root))
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == set(Snapshot.__dataclass_fields__)
    snap = Snapshot.from_dict(data)
    assert snap.cpu_percent is not None and snap.stale == ()
    if not psutil.sensors_temperatures() and psutil.sensors_battery() is None:  # this VM: sysfs decides
        assert (snap.temperature_c, snap.battery_percent, snap.on_ac) == (85.0, 15.0, False)


@pytest.mark.daemon
def test_show_prints_a_table() -> None:
    result = cli("show")
    assert result.returncode == 0, result.stderr
    assert "cpu_percent" in result.stdout and "memory_percent" in result.stdout


@pytest.mark.daemon
def test_record_without_daemon_writes_a_trace_without_observed(tmp_path: Path) -> None:
    out = tmp_path / "trace.jsonl"
    result = cli("record", "--out", str(out), "--seconds", "2", "--socket", str(tmp_path / "none.sock"))
    assert result.returncode == 0, result.stderr
    entries = read_trace(out)
    assert len(entries) == 2 and all(e.observed is None for e in entries)
    assert 0.5 < entries[1].snapshot.time - entries[0].snapshot.time < 1.5
    assert all(e.snapshot.cpu_percent is not None for e in entries)
    assert all('"observed"' not in line for line in out.read_text().splitlines())


STATUS = {
    "config": {"current": "int8@0.5", "reason": "test"},
    "window": {"span_s": 30.0, "count": 17, "p50_ms": 12.5, "p95_ms": 30.25, "p99_ms": 33.0},
}


class _StatusHandler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(STATUS).encode()
        self.send_response(200 if self.path == "/v1/status" else 404)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def fake_daemon(tmp_path: Path) -> Iterator[Path]:
    """A Unix socket answering /v1/status like the daemon, without loading any model."""
    path = tmp_path / "d.sock"
    server = socketserver.UnixStreamServer(str(path), _StatusHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path
    server.shutdown()
    server.server_close()


@pytest.mark.daemon
def test_record_with_daemon_adds_its_configuration_and_latency_window(tmp_path: Path, fake_daemon: Path) -> None:
    out = tmp_path / "trace.jsonl"
    args = ("--out", str(out), "--seconds", "1", "--interval", "0.5", "--socket", str(fake_daemon))
    result = cli("record", *args)
    assert result.returncode == 0, result.stderr
    entries = read_trace(out)
    assert len(entries) == 2
    expected = {"config": "int8@0.5", "p50_ms": 12.5, "p95_ms": 30.25, "p99_ms": 33.0, "count": 17}
    assert all(e.observed == expected for e in entries)
