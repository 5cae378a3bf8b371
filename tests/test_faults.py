"""Faults after start, through the real daemon: a model file deleted or replaced, an
onnxruntime run that raises, a telemetry read that hangs, the policy file deleted or made
unreadable, and a SIGKILL followed by a restart. Plus the pure parts (variant health, the
guarded telemetry source) driven without a daemon."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from agent.cli.scenario import injected_telemetry_env
from agent.client import ClientError
from agent.daemon.adaptive import AdaptiveLoop
from agent.errors import VariantUnavailable
from agent.serving.health import OUT_OF_SERVICE, UNHEALTHY, VariantHealth
from agent.serving.metrics import Metrics
from agent.serving.runner import Runner
from agent.telemetry.snapshot import Snapshot
from agent.telemetry.sources import READING_FIELDS, GuardedSource
from agent.values import Config
from agent.zoo.sessions import SessionSettings, open_zoo
from tests.daemon import DaemonProcess, eventually
from tests.zoos import CLASSES, NOISE, SIZE, WHITE, make_zoo


def policy_text(latency_ms: float) -> str:
    return (
        f"version: 1\nslo: {{percentile: 95, latency_ms: {latency_ms}, window_s: 3, headroom: 0.85}}\n"
        "hysteresis: {dwell_s: 0.5, min_switch_interval_s: 0.2}\n"
    )


def start(tmp_path: Path, zoo: Path, env: dict[str, str] | None = None, policy_ms: float = 500) -> DaemonProcess:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(policy_ms))
    return DaemonProcess(
        tmp_path / "d",
        args=["--zoo", str(zoo), "--policy", str(policy)],
        env={"EDGE_AGENT_WARMUP_RUNS": "1", **(env or {})},
    ).start()


def metric(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(name)).split()[-1])


# -- 1. a model file deleted or replaced after start --------------------------------------------


@pytest.mark.daemon
def test_changed_or_vanished_model_file_is_taken_out_of_service_on_reload(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False), "c": (0.7, False)})
    original_a = (zoo / "a.onnx").read_bytes()
    d = start(tmp_path, zoo, {"EDGE_AGENT_DEFAULT_VARIANT": "a"})
    try:
        with d.client() as c, httpx.Client(transport=httpx.HTTPTransport(uds=str(d.socket_path))) as http:
            assert c.status()["config"]["current"] == "a@1"
            (zoo / "a.onnx").unlink()  # the variant in force
            d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
            st = eventually(lambda: "a" in c.status()["unavailable_variants"] and c.status(), 10, "a out of service")
            assert isinstance(st, dict)
            assert st["unavailable_variants"]["a"]["state"] == OUT_OF_SERVICE
            assert "missing" in st["unavailable_variants"]["a"]["reason"]
            assert st["config"]["current"] == "b@1" and "a is out of service" in st["config"]["reason"]
            assert c.classify(WHITE)["variant"] == "b"
            with pytest.raises(ClientError) as refused:
                c.pin("a@1", 60)
            assert (refused.value.status, refused.value.code) == (503, "variant_unavailable")
            infer = {"inputs": [{"name": "image", "datatype": "FP32", "shape": [1, 3, SIZE, SIZE],
                                 "data": NOISE.ravel().tolist()}]}  # fmt: skip
            explicit = http.post("http://edge-agent/v2/models/a/infer", json=infer)
            assert explicit.status_code == 503 and "variant a is out of service" in explicit.json()["error"]
            assert http.get("http://edge-agent/v2/models/a/ready").json()["ready"] is False
            assert http.get("http://edge-agent/v2/models/b/ready").json()["ready"] is True

            (zoo / "c.onnx").write_bytes((zoo / "b.onnx").read_bytes())  # replaced by another model
            answer = c.reload()
            assert set(answer["out_of_service"]) == {"a", "c"} and "SHA-256" in answer["out_of_service"]["c"]
            st = c.status()
            assert st["unavailable_variants"]["c"]["state"] == OUT_OF_SERVICE
            assert st["config"]["current"] == "b@1" and c.classify(NOISE)["variant"] == "b"  # the rest keep serving
            assert "SHA-256" in st["last_error"]
            gauge = 'edge_agent_variant_unavailable{state="out_of_service",variant="c"}'
            assert metric(c.metrics(), gauge) == 1.0

            (zoo / "a.onnx").write_bytes(original_a)  # restored with the manifest's hash
            assert set(c.reload()["out_of_service"]) == {"c"}
            assert "a" not in c.status()["unavailable_variants"]
            eventually(lambda: c.status()["config"]["current"] == "a@1", 10, "back on a, the most accurate")
            assert c.classify(NOISE)["variant"] == "a"
        assert '"variant_out_of_service"' in d.log() and '"variant_back_in_service"' in d.log()
    finally:
        assert d.stop() == 0


def test_without_a_latency_profile_the_runner_moves_to_any_variant_in_service(tmp_path: Path) -> None:
    """No profile, no controller options: the reload still moves off the bad file, and with
    every file bad every request is refused rather than served from one."""
    zoo_dir = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)}, profiled=False)
    runner = Runner(open_zoo(zoo_dir, SessionSettings(intra_threads=1)), Config("a", 1.0), 1, 1)
    loop = AdaptiveLoop(runner, Fixed(), None, Metrics(), 1, tmp_path)
    assert loop.options == []
    (zoo_dir / "a.onnx").unlink()
    assert set(loop.recheck_zoo()) == {"a"}
    assert runner.current == Config("b", 1.0) and "only variant left" in runner.reason
    (zoo_dir / "b.onnx").write_bytes(b"junk")
    assert set(loop.recheck_zoo()) == {"a", "b"}
    with pytest.raises(VariantUnavailable, match="variant b is out of service"):
        asyncio.run(runner.submit(lambda v: NOISE[None]))
    runner.close()


# -- 2. an onnxruntime run that raises ---------------------------------------------------------


@pytest.mark.daemon
def test_failing_onnxruntime_run_is_500_and_repeated_failures_move_the_controller_away(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"faulty": (0.95, True), "healthy": (0.6, False)})
    d = start(tmp_path, zoo, {"EDGE_AGENT_DEFAULT_VARIANT": "faulty"})
    try:
        with d.client() as c:
            assert c.status()["config"]["current"] == "faulty@1"  # the most accurate: the controller keeps it
            assert c.classify(NOISE)["variant"] == "faulty"
            for _ in range(3):
                with pytest.raises(ClientError) as failed:
                    c.classify(WHITE)
                assert (failed.value.status, failed.value.code) == (500, "inference_failed")
                assert "onnxruntime failed" in failed.value.message and "Reshape" in failed.value.message
            assert c.classify(NOISE)["label"] in CLASSES  # the worker survived
            st = c.status()
            assert st["unavailable_variants"]["faulty"]["state"] == UNHEALTHY
            assert st["unavailable_variants"]["faulty"]["cooldown_left_s"] > 0
            assert "inference_failed" not in (st["last_error"] or "") and "onnxruntime failed" in st["last_error"]
            eventually(lambda: c.status()["config"]["current"] == "healthy@1", 10, "the controller leaves faulty")
            st = c.status()
            assert "faulty is unhealthy" in st["config"]["reason"]
            assert c.classify(WHITE)["variant"] == "healthy"  # white images succeed again
            metrics = c.metrics()
        assert metric(metrics, 'edge_agent_inference_failures_total{variant="faulty"}') == 3.0
        assert metric(metrics, 'edge_agent_inference_failures_total{variant="healthy"}') == 0.0
        assert metric(metrics, 'edge_agent_variant_unavailable{state="unhealthy",variant="faulty"}') == 1.0
        assert '"variant_unhealthy"' in d.log()
    finally:
        assert d.stop() == 0


def test_variant_is_unhealthy_after_threshold_failures_in_window_until_the_cooldown_ends() -> None:
    health = VariantHealth(threshold=3, window=5, cooldown_s=10)
    for t, ok in enumerate([False, True, False, True, True]):
        health.record("v", ok, float(t), "boom")
    assert health.unavailable(4.0) == {}  # 2 failures in the last 5 runs
    health.record("v", False, 5.0, "boom")  # 3 failures so far, but the first has left the window
    assert health.unavailable(5.0) == {}
    health.record("v", False, 6.0, "boom")  # 3 of the last 5
    entry = health.unavailable(6.0)["v"]
    assert entry.state == UNHEALTHY and entry.until == 16.0 and "boom" in entry.reason
    health.record("v", False, 7.0, "boom")  # failures during the cooldown do not extend it
    assert health.unavailable(15.9)["v"].until == 16.0
    assert health.unavailable(16.0) == {}
    health.record("v", False, 16.5, "boom")  # a clean record after the cooldown
    assert health.unavailable(16.5) == {}
    assert health.failures() == {"v": 6}


def test_out_of_service_wins_over_unhealthy_and_lasts_until_restored() -> None:
    health = VariantHealth(threshold=1, window=1, cooldown_s=1)
    health.record("v", False, 0.0, "boom")
    health.retire("v", "file missing")
    assert health.unavailable(0.5)["v"].state == OUT_OF_SERVICE
    assert health.unavailable(100.0)["v"].reason == "file missing"  # no cooldown: until restored
    health.restore("v")
    assert health.unavailable(100.0) == {}


# -- 3. telemetry reads that hang or raise ---------------------------------------------------------


class Fixed:
    """A telemetry source that always reads the same."""

    def read(self, now: float) -> Snapshot:
        return Snapshot(time=now)


class Blocking:
    """A telemetry source whose reads block until released (a hung driver), counting reads."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.reads = 0
        self.value = 50.0

    def read(self, now: float) -> Snapshot:
        self.reads += 1
        if self.reads > 1:
            self.release.wait()
        return Snapshot(time=now, battery_percent=self.value)


def test_hung_read_keeps_last_reading_marks_all_stale_and_never_piles_up_threads() -> None:
    base = Blocking()
    source = GuardedSource(base, interval_s=0.1)
    assert source.read(1.0) == Snapshot(time=1.0, battery_percent=50.0)
    base.value = 20.0
    before = threading.active_count()
    for t in range(2, 6):
        started = time.monotonic()
        stale = source.read(float(t))
        assert time.monotonic() - started < 2.0  # bounded by the 0.05 s deadline, generously
        assert stale == Snapshot(time=float(t), battery_percent=50.0, stale=READING_FIELDS)
    assert base.reads == 2 and threading.active_count() <= before + 1  # one stuck read, not one per tick
    base.release.set()
    assert eventually(lambda: source.read(7.0).battery_percent == 20.0, 5, "the late reading is used")
    assert source.read(8.0).stale == ()


def test_source_that_raises_keeps_last_reading_stale() -> None:
    calls: list[float] = []

    class Flaky:
        def read(self, now: float) -> Snapshot:
            calls.append(now)
            if len(calls) == 2:
                raise OSError("sensor gone")
            return Snapshot(time=now, temperature_c=60.0)

    source = GuardedSource(Flaky(), interval_s=1.0)
    assert source.read(1.0).temperature_c == 60.0
    assert source.read(2.0) == Snapshot(time=2.0, temperature_c=60.0, stale=READING_FIELDS)
    assert source.read(3.0) == Snapshot(time=3.0, temperature_c=60.0)


@pytest.mark.daemon
def test_telemetry_file_that_blocks_keeps_the_daemon_serving_and_shows_stale(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False)})
    override = tmp_path / "telemetry.json"
    override.write_text(json.dumps({"battery_percent": 55}))
    env = {**injected_telemetry_env(override, 0.2), "EDGE_AGENT_POLICY_WATCH_S": "0.2"}
    d = start(tmp_path, zoo, env, policy_ms=40)
    try:
        with d.client(timeout=5) as c:
            eventually(lambda: c.status()["telemetry"]["battery_percent"] == 55, 10, "the override is read")
            override.unlink()
            os.mkfifo(override)  # no writer: opening it blocks the reading thread
            eventually(lambda: set(c.status()["telemetry"]["stale"]) == set(READING_FIELDS), 10, "telemetry stale")
            assert c.status()["telemetry"]["battery_percent"] == 55  # the last value is kept
            assert c.classify(NOISE)["variant"] == "a"
            (tmp_path / "policy.yaml").write_text(policy_text(33))  # the watcher and the controller still tick
            eventually(lambda: c.status()["slo"]["latency_ms"] == 33, 10, "the edited SLO is in force")

            # A writer unblocks the stuck read; the path is a plain file again for the reads after it.
            content = json.dumps({"battery_percent": 20}).encode()
            fresh = tmp_path / "fresh.json"
            fresh.write_bytes(content)
            fd = os.open(override, os.O_WRONLY | os.O_NONBLOCK)  # the stuck reader holds it open
            os.replace(fresh, override)
            os.write(fd, content)
            os.close(fd)

            def recovered() -> bool:
                telemetry = c.status()["telemetry"]
                return telemetry["battery_percent"] == 20 and "battery_percent" not in telemetry["stale"]

            eventually(recovered, 10, "fresh telemetry after the read returns")
        log = d.log()
        assert '"telemetry_source_failed"' in log and '"telemetry_source_recovered"' in log
    finally:
        try:
            code = d.stop(timeout=20)  # a scheduler thread stuck in the read would hold up the exit
        finally:
            d.close()
    assert code == 0


# -- 4. the policy file deleted or made unreadable while running -----------------------------------


@pytest.mark.daemon
def test_policy_file_deleted_or_unreadable_keeps_last_good_without_a_reload_call(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False)})
    d = start(tmp_path, zoo, {"EDGE_AGENT_POLICY_WATCH_S": "0.2"}, policy_ms=40)
    policy = tmp_path / "policy.yaml"
    try:
        with d.client() as c:
            digest = c.status()["policy"]["digest"]

            def refused(why: str) -> Callable[[], bool]:
                def check() -> bool:
                    st = c.status()
                    kept = st["policy"]["digest"] == digest and st["slo"]["latency_ms"] == 40
                    return kept and why in (st["policy"]["last_error"] or "")

                return check

            policy.unlink()
            eventually(refused("No such file"), 10, "deletion reported, last good kept")
            policy.mkdir()  # a path that cannot be read as a file
            eventually(refused("not a regular file"), 10, "unreadable file reported, last good kept")
            assert c.classify(NOISE)["variant"] == "a"
            policy.rmdir()
            policy.write_text(policy_text(33))
            eventually(lambda: c.status()["slo"]["latency_ms"] == 33, 10, "a good file is taken again")
            assert c.status()["policy"]["last_error"] is None
        assert d.log().count('"policy_reload_failed"') >= 2
    finally:
        assert d.stop() == 0


# -- 5. SIGKILL and a restart, as systemd's Restart= does ------------------------------------------


@pytest.mark.daemon
def test_after_sigkill_a_restart_replaces_the_stale_socket_and_keeps_the_pin(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)})
    first = start(tmp_path, zoo, {"EDGE_AGENT_DEFAULT_VARIANT": "a"})
    pin_file = first.workdir / "state" / "pin.json"
    try:
        with first.client() as c:
            c.pin("b@1", 600, "maintenance window")
        assert json.loads(pin_file.read_text())["config"] == "b@1"
        first.proc.send_signal(signal.SIGKILL)  # type: ignore[union-attr]
        assert first.proc.wait(30) == -signal.SIGKILL  # type: ignore[union-attr]
    finally:
        first.close()
    assert first.socket_path.exists()  # left behind: nobody removed it

    second = DaemonProcess(first.workdir, args=first.args, env=first.env).start()
    try:
        with second.client() as c:
            st = c.status()
            assert st["config"]["pinned"]["config"] == "b@1"
            assert st["config"]["pinned"]["reason"] == "maintenance window"
            assert c.classify(NOISE)["variant"] == "b"
            c.unpin()
        assert not pin_file.exists()  # removing the pin removes it from the state directory too
    finally:
        assert second.stop() == 0
    assert '"pin_restored"' in second.log()


@pytest.mark.daemon
def test_pinning_the_current_configuration_is_persisted_too(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False)})
    d = start(tmp_path, zoo)
    try:
        with d.client() as c:
            assert c.status()["config"]["current"] == "a@1"
            c.pin("a@1", 600, "no switch needed")
        assert json.loads((d.workdir / "state" / "pin.json").read_text())["reason"] == "no switch needed"
    finally:
        assert d.stop() == 0
