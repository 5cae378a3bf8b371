"""Faults gateways really have (issue 19, point 4), through the real daemon: the wall clock
stepped an hour back and forward under load (no real-time clock; NTP steps it at boot), a
SIGKILL during the write of every file edge-agent writes, the state directory read-only or
full, and a model file replaced on disk after start."""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent.client import Client, ClientError
from tests.daemon import DaemonProcess, eventually
from tests.zoos import NOISE, make_zoo


def metric(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(name)).split()[-1])


@contextmanager
def load(socket_path: Path) -> Iterator[dict[str, int]]:
    """Requests flowing in a thread for the whole block: counts of answers and failures."""
    counts = {"ok": 0, "failed": 0}
    stop = threading.Event()

    def send() -> None:
        with Client(socket_path, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.classify(NOISE)
                    counts["ok"] += 1
                except ClientError:
                    counts["failed"] += 1

    thread = threading.Thread(target=send, daemon=True)
    thread.start()
    try:
        yield counts
    finally:
        stop.set()
        thread.join(30)


# -- 1. the wall clock stepped an hour back and forward -------------------------------------------


def hhmm(at: dt.datetime) -> str:
    return at.strftime("%H:%M")


def step_wall_clock(offset_file: Path, seconds: float) -> None:
    """Set the daemon's wall clock to the real one + `seconds` (written whole: a torn read would
    itself be a step)."""
    tmp = offset_file.with_suffix(".tmp")
    tmp.write_text(f"{seconds:g}")
    os.replace(tmp, offset_file)


@pytest.mark.daemon
def test_wall_clock_steps_under_load_move_no_span_and_time_of_day_rules_follow(tmp_path: Path) -> None:
    """Spans (a pin's time left, dwell, the latency window, uptime) run on the monotonic clock;
    the time of day a rule reads follows the stepped wall clock."""
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)})
    now = dt.datetime.now()
    shift = [hhmm(now - dt.timedelta(minutes=30)), hhmm(now + dt.timedelta(minutes=30))]  # true now, not +-1 h
    dwell_s = 8.0
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "version: 1\nslo: {percentile: 95, latency_ms: 500, window_s: 30, headroom: 0.85}\n"
        f"hysteresis: {{dwell_s: {dwell_s}, min_switch_interval_s: 0.2}}\n"
        f"rules:\n  - {{name: night_shift, when: {{time_between: {json.dumps(shift)}}}, "
        "then: {allow_variants: [b]}}\n"
    )
    offset = tmp_path / "clock-offset"
    step_wall_clock(offset, 0)
    d = DaemonProcess(
        tmp_path / "d",
        args=["--zoo", str(zoo), "--policy", str(policy)],
        env={
            "EDGE_AGENT_WARMUP_RUNS": "1",
            "EDGE_AGENT_DEFAULT_VARIANT": "a",
            "EDGE_AGENT_TELEMETRY_INTERVAL_S": "0.25",
            "EDGE_AGENT_WALL_CLOCK_OFFSET_FILE": str(offset),
        },
    ).start()
    pin_file = d.workdir / "state" / "pin.json"
    try:
        with d.client() as c, load(d.socket_path) as counts:
            eventually(lambda: c.status()["config"]["current"] == "b@1", 10, "the rule holds at the true time")
            pinned = c.pin("a@1", 300, "maintenance")
            until = pinned["until"]
            uptime = c.status()["uptime_s"]
            started = time.monotonic()

            def steps(n: int) -> dict[str, object]:
                st = eventually(lambda: c.status()["clock"]["wall_steps"] == n and c.status(), 10, f"{n} steps")
                assert isinstance(st, dict)
                return st

            # An hour back: the pin keeps its time left; its `until` is restated on the new clock.
            step_wall_clock(offset, -3600)
            st = steps(1)
            pin = st["config"]["pinned"]
            assert pin["config"] == "a@1" and abs(pin["until"] - (until - 3600)) < 3
            assert 300 - (time.monotonic() - started) - 3 < pin["left_s"] <= 300
            assert st["clock"]["last_step_s"] == pytest.approx(-3600, abs=3)
            assert json.loads(pin_file.read_text())["until"] == pin["until"]  # a restart keeps the expiry

            # An hour forward from the start: two hours on. The pin's first `until` is long past
            # on this clock; the pin stays, and pin.json says its `until` on the new clock.
            step_wall_clock(offset, 3600)
            st = steps(2)
            pin = st["config"]["pinned"]
            assert pin is not None and abs(pin["until"] - (until + 3600)) < 3 and pin["left_s"] > 250
            assert json.loads(pin_file.read_text())["until"] == pin["until"]
            assert st["config"]["current"] == "a@1"
            # Uptime, the latency window and the SLO figures are spans: no step moved them.
            assert uptime <= st["uptime_s"] <= uptime + (time.monotonic() - started) + 1
            assert st["window"]["count"] > 0 and st["window"]["p50_ms"] is not None
            assert st["slo"]["requests"] > 0 and st["slo"]["attainment"] == 1.0
            # Back to the true time: the rule holds again; without the pin the controller follows it.
            step_wall_clock(offset, 0)
            steps(3)
            c.unpin()
            eventually(lambda: c.status()["config"]["current"] == "b@1", 10, "the rule holds again")
            assert "night_shift" in c.status()["slo"]["rules"]

            # An hour forward ends the night shift; `a` comes back after the dwell. A second step
            # forward during the dwell does not end it early (on the wall clock it would).
            for forward in (3600, 7200):
                step_wall_clock(offset, forward)
                if forward == 3600:
                    t0 = time.monotonic()
                steps(4 if forward == 3600 else 5)
                assert c.status()["config"]["current"] == "b@1"  # the dwell is not over
            eventually(lambda: c.status()["config"]["current"] == "a@1", 30, "a back after the dwell")
            assert time.monotonic() - t0 >= dwell_s - 0.5
            assert "night_shift" not in c.status()["slo"]["rules"]

            # At the true time again the rule holds at once; an hour back ends it, and a second
            # step back during the dwell does not make it last an hour (on the wall clock it would).
            step_wall_clock(offset, 0)
            eventually(lambda: c.status()["config"]["current"] == "b@1", 10, "the rule holds again")
            steps(6)
            for back in (-3600, -7200):
                step_wall_clock(offset, back)
                if back == -3600:
                    t0 = time.monotonic()
                steps(7 if back == -3600 else 8)
            eventually(lambda: c.status()["config"]["current"] == "a@1", 30, "a back after the dwell")
            assert time.monotonic() - t0 >= dwell_s - 0.5
            metrics = c.metrics()
        assert counts["ok"] > 20 and counts["failed"] == 0
        assert metric(metrics, "edge_agent_slo_attainment") == 1.0
        assert d.log().count('"wall_clock_stepped"') == 8
    finally:
        assert d.stop() == 0
