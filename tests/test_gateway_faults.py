"""Faults gateways really have (issue 19, point 4), through the real daemon: the wall clock
stepped an hour back and forward under load (no real-time clock; NTP steps it at boot), a
SIGKILL during the write of every file edge-agent writes, the state directory read-only or
full, and a model file replaced on disk after start."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import random
import shutil
import signal
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from rich.console import Console

from agent.cli.status_view import render_status
from agent.cli.zoo_files import write_state
from agent.client import Client, ClientError
from agent.daemon.adaptive import AdaptiveLoop
from agent.daemon.pin_file import load_pin, save_pin
from agent.paths import Located
from agent.serving.metrics import Metrics
from agent.serving.runner import Runner
from agent.telemetry.snapshot import Snapshot
from agent.values import Config, Pin
from agent.zoo.accuracy_tables import SiteAccuracy, SitePoint, site_table_file
from agent.zoo.manifest import DeviceProfile, LatencyPoint, LatencyProfile, ProfiledVariant, load_device_profile
from agent.zoo.sessions import SessionSettings, open_zoo
from tests.daemon import REPO, DaemonProcess, eventually
from tests.zoos import NOISE, make_zoo


def metric(text: str, name: str) -> float:
    return float(next(line for line in text.splitlines() if line.startswith(name)).split()[-1])


@dataclass
class Load:
    ok: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)


@contextmanager
def load(socket_path: Path, image: Path | None = None, clients: int = 1) -> Iterator[Load]:
    """Requests flowing from `clients` threads for the whole block, naming no variant: how many
    were answered, how many failed and why."""
    counts = Load()
    stop = threading.Event()

    def send() -> None:
        with Client(socket_path, timeout=30) as c:
            while not stop.is_set():
                try:
                    c.classify(NOISE if image is None else image)
                    counts.ok += 1
                except ClientError as exc:
                    counts.failed += 1
                    counts.errors.append(f"{exc.status} {exc.code}: {exc.message}")

    threads = [threading.Thread(target=send, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield counts
    finally:
        stop.set()
        for thread in threads:
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
        assert counts.ok > 20 and counts.failed == 0
        assert metric(metrics, "edge_agent_slo_attainment") == 1.0
        assert d.log().count('"wall_clock_stepped"') == 8
    finally:
        assert d.stop() == 0


# -- 2. SIGKILL during the write of every file edge-agent writes -----------------------------------

#: Kills per file: each at a random moment of a writer looping over ever newer versions.
KILLS = 25
SHA = "0" * 64


def pin_version(n: int) -> Pin:
    return Pin(Config("a", 1.0), float(n), f"maintenance {n} " + "x" * 30_000)  # pin.json stays under 64 KiB


def profile_version(n: int) -> str:
    """About 1 MB, like every version here: a write takes long enough to be interrupted."""
    points = [LatencyPoint(budget=1.0, threads=t, p50_ms=n + 1.0, p95_ms=n + 2.0) for t in range(1, 9)]
    profile = LatencyProfile(machine="m", measured_at="t", points=points)
    variants = {f"v{i}": ProfiledVariant(sha256=SHA, latency=profile) for i in range(20)}
    return (
        DeviceProfile(machine=f"version {n} " + "x" * 1_000_000, measured_at="t", variants=variants).model_dump_json(
            indent=2
        )
        + "\n"
    )


def site_version(n: int) -> str:
    points = [SitePoint(variant=f"v{i}", sha256=SHA, budget=1.0, correct=n, images=n + 1) for i in range(100)]
    return site_table_file(f"version {n} " + "y" * 1_000_000, ["ok", "scratch"], points)


def check_pin(path: Path) -> int:
    pin = load_pin(path)  # the daemon's own reader: None for a file it cannot use
    assert pin is not None, "pin.json unusable after the kill"
    assert pin == pin_version(int(pin.until))
    return int(pin.until)


def check_profile(path: Path) -> int:
    profile = load_device_profile(path)  # raises ZooError on a torn file
    assert profile is not None
    n = int(profile.machine.split()[1])
    assert path.read_text() == profile_version(n)
    return n


def check_site(path: Path) -> int:
    site = SiteAccuracy.model_validate_json(path.read_bytes())
    n = int(site.data.split()[1])
    assert len(site.points) == 100 and all(p.correct == n and p.images == n + 1 for p in site.points)
    return n


def write_pin(path: Path, n: int) -> None:
    save_pin(path, pin_version(n))


def write_profile(path: Path, n: int) -> None:
    write_state(Located(path, "--out"), profile_version(n))  # what `zoo profile` calls


def write_site(path: Path, n: int) -> None:
    write_state(Located(path, "--state-dir"), site_version(n))  # what `zoo eval --save` calls


def naive_write(render: Callable[[int], str]) -> Callable[[Path, int], None]:
    """A writer that overwrites in place: the control that shows the check sees a torn file."""

    def write(path: Path, n: int) -> None:
        with path.open("w") as out:
            out.write(render(n))

    return write


def kill_during_writes(
    path: Path, write: Callable[[Path, int], None], check: Callable[[Path], int]
) -> tuple[set[int], int]:
    """SIGKILL a forked writer (versions 1, 2, ... of `path` in a loop) at random moments,
    `KILLS` times; after each kill the file must pass `check`. The versions found, and how
    many kills left a file that failed it."""
    rng = random.Random(19)
    found: set[int] = set()
    torn = 0
    version = 0
    for _ in range(KILLS):
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the writer: never returns into pytest
            try:
                os.close(ready_r)
                n = version + 1
                write(path, n)  # one whole version first, so every kill interrupts a later one
                os.write(ready_w, b"1")
                while True:
                    n += 1
                    write(path, n)
            finally:
                os._exit(1)
        os.close(ready_w)
        assert os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        time.sleep(rng.uniform(0, 0.05))
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        try:
            version = check(path)
            found.add(version)
        except Exception:
            torn += 1
            version += 1_000_000  # versions stay increasing across writers
    return found, torn


@pytest.mark.parametrize(
    ("name", "write", "check", "render"),
    [
        (
            "pin.json",
            write_pin,
            check_pin,
            lambda n: json.dumps({"config": "a@1", "until": n, "reason": pin_version(n).reason}),
        ),
        ("device-profile.json", write_profile, check_profile, profile_version),
        ("site-accuracy.json", write_site, check_site, site_version),
    ],
)
def test_sigkill_during_a_write_leaves_the_old_or_the_new_file_never_a_torn_one(
    tmp_path: Path,
    name: str,
    write: Callable[[Path, int], None],
    check: Callable[[Path], int],
    render: Callable[[int], str],
) -> None:
    path = tmp_path / "state" / name
    path.parent.mkdir(mode=0o750)
    umask = os.umask(0o077)  # root's umask in a hardened shell: a file the service reads must still be 0644
    try:
        found, torn = kill_during_writes(path, write, check)
    finally:
        os.umask(umask)
    assert torn == 0 and len(found) == KILLS  # each kill found a whole file, and a later one each time
    assert stat.S_IMODE(path.stat().st_mode) == (0o600 if name == "pin.json" else 0o644)
    leftovers = [f for f in os.listdir(path.parent) if f != name]
    assert all(f.startswith(f".{name}.") and f.endswith(".tmp") for f in leftovers)  # a killed write's temp file

    control = tmp_path / "naive" / name
    control.parent.mkdir()
    control.write_text(render(0))
    _, naive_torn = kill_during_writes(control, naive_write(render), check)
    assert naive_torn > 0  # the check does see a torn file when there is one


# -- 3. the state directory read-only or full --------------------------------------------------------


def mount(*args: str) -> None:
    """Real mounts, as a gateway's failing flash or full partition gives them (the tests run as root)."""
    subprocess.run(["mount", *args], check=True, capture_output=True)


@contextmanager
def read_only(folder: Path) -> Iterator[None]:
    """`folder` read-only, as the kernel remounts a failing SD card: a read-only bind mount over it."""
    mount("--bind", str(folder), str(folder))
    try:
        mount("-o", "remount,ro,bind", str(folder))
        yield
    finally:
        subprocess.run(["umount", str(folder)], check=True)


@contextmanager
def full(folder: Path) -> Iterator[Path]:
    """A small tmpfs over `folder`, filled up; yields the file that fills it."""
    mount("-t", "tmpfs", "-o", "size=1m,mode=0750", "tmpfs", str(folder))
    try:
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            with pytest.raises(OSError, match="No space left"):
                while True:
                    os.write(fd, b"\0" * 4096)
        finally:
            os.close(fd)
        yield filler
    finally:
        subprocess.run(["umount", str(folder)], check=True)


def start_plain(tmp_path: Path) -> DaemonProcess:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)})
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nslo: {percentile: 95, latency_ms: 500, window_s: 5}\n")
    d = DaemonProcess(
        tmp_path / "d",
        args=["--zoo", str(zoo), "--policy", str(policy)],
        env={"EDGE_AGENT_WARMUP_RUNS": "1", "EDGE_AGENT_POLICY_WATCH_S": "0.2"},
    )
    (d.workdir / "state").mkdir(parents=True, mode=0o750)
    return d.start()


def saved_reason(state: Path) -> str:
    return str(json.loads((state / "pin.json").read_text())["reason"])


@pytest.mark.daemon
def test_read_only_state_dir_keeps_serving_says_so_once_and_saves_when_writable_again(tmp_path: Path) -> None:
    d = start_plain(tmp_path)
    state = d.workdir / "state"
    try:
        with d.client() as c, load(d.socket_path) as counts:
            c.pin("b@1", 600, "before")
            assert saved_reason(state) == "before" and c.status()["state_dir"]["problem"] is None
            with read_only(state):
                eventually(lambda: c.status()["state_dir"]["problem"] == "read-only", 10, "the watch sees it")
                assert metric(c.metrics(), "edge_agent_state_dir_writable") == 0.0
                assert c.pin("a@1", 600, "during")["config"] == "a@1"  # in force, in memory
                st = c.status()
                assert st["state_dir"]["problem"] == "read-only: cannot save pin.json"
                shown = Console(file=io.StringIO(), width=300)
                shown.print(render_status(st, time.time(), str(d.socket_path)))
                assert f"state directory {state}: read-only: cannot save pin.json" in shown.file.getvalue()  # type: ignore[attr-defined]
                logged = d.log().count('"state_dir_unwritable"')
                for i in range(10):  # each tries to save pin.json and fails
                    c.unpin()
                    c.pin("a@1", 600, f"during {i}")
                assert c.status()["config"]["pinned"]["reason"] == "during 9"
                assert c.classify(NOISE)["variant"] == "a"
                assert d.log().count('"state_dir_unwritable"') == logged <= 2  # once per problem, not per attempt
                assert saved_reason(state) == "before"  # the old file, whole
            eventually(lambda: c.status()["state_dir"]["problem"] is None, 10, "writable again")
            eventually(lambda: saved_reason(state) == "during 9", 10, "the pin in force saved on recovery")
            assert metric(c.metrics(), "edge_agent_state_dir_writable") == 1.0
        assert counts.ok > 10 and counts.failed == 0
        assert d.log().count('"state_dir_writable"') == 1
    finally:
        assert d.stop() == 0


@pytest.mark.daemon
def test_full_state_dir_keeps_serving_says_so_once_and_saves_when_space_is_back(tmp_path: Path) -> None:
    d = start_plain(tmp_path)
    state = d.workdir / "state"
    try:
        with d.client() as c, load(d.socket_path) as counts, full(state) as filler:
            eventually(lambda: c.status()["state_dir"]["problem"] == "disk full", 10, "the watch sees it")
            for i in range(10):
                c.pin("b@1", 600, f"full {i}")
            st = c.status()
            assert st["state_dir"]["problem"] == "disk full: cannot save pin.json"
            assert st["config"]["pinned"]["reason"] == "full 9" and c.classify(NOISE)["variant"] == "b"
            assert d.log().count('"state_dir_unwritable"') <= 2
            assert sorted(os.listdir(state)) == ["filler"]  # no temp file left behind by the failed writes
            filler.unlink()
            eventually(lambda: c.status()["state_dir"]["problem"] is None, 10, "space again")
            eventually(lambda: saved_reason(state) == "full 9", 10, "the pin in force saved")
        assert counts.ok > 10 and counts.failed == 0
    finally:
        assert d.stop() == 0


# -- 4. a model file replaced on disk after start ------------------------------------------------------


@pytest.mark.daemon
def test_a_model_file_replaced_after_start_is_found_at_reload_and_no_request_fails(tmp_path: Path) -> None:
    """The shipped zoo, copied: pruned.onnx is replaced by other bytes (another valid model) while
    pinned and under load. Until the reload the verified session in memory serves; the reload
    finds the hash changed, names it in status and takes pruned out of service, moving the
    configuration off it first, so no request that named no variant fails. Five times over."""
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    for name in ["manifest.json", *(f.name for f in (REPO / "model_zoo").glob("*.onnx"))]:
        shutil.copy(REPO / "model_zoo" / name, zoo / name)
    verified, other = (zoo / "pruned.onnx").read_bytes(), (zoo / "int8.onnx").read_bytes()
    policy = tmp_path / "policy.yaml"
    policy.write_text("version: 1\nslo: {percentile: 95, latency_ms: 1000, window_s: 5}\n")
    d = DaemonProcess(
        tmp_path / "d", args=["--zoo", str(zoo), "--policy", str(policy)], env={"EDGE_AGENT_WARMUP_RUNS": "1"}
    ).start()
    sample = REPO / "docs" / "samples" / "scratch_0.png"
    try:
        with d.client() as c, load(d.socket_path, sample, clients=2) as counts:
            for round_ in range(5):
                c.pin("pruned@1", 600, f"maintenance {round_}")
                replacement = zoo / ".pruned.onnx.new"
                replacement.write_bytes(other)
                os.replace(replacement, zoo / "pruned.onnx")  # as a deploy tool swaps a file
                assert c.classify(sample)["variant"] == "pruned"  # no reload yet: the verified copy serves

                answer = c.reload()
                assert "SHA-256 mismatch for pruned.onnx" in answer["out_of_service"]["pruned"]
                st = c.status()
                assert st["unavailable_variants"]["pruned"]["state"] == "out_of_service"
                assert "SHA-256 mismatch" in st["unavailable_variants"]["pruned"]["reason"]
                assert st["config"]["pinned"] is None and st["config"]["variant"] != "pruned"
                assert "pruned is out of service" in st["config"]["reason"]
                with pytest.raises(ClientError) as refused:
                    c.pin("pruned@1", 60)
                assert (refused.value.status, refused.value.code) == (503, "variant_unavailable")
                assert c.classify(sample)["variant"] != "pruned"

                (zoo / "pruned.onnx").write_bytes(verified)  # the right file back: in service again
                assert c.reload()["out_of_service"] == {}
                assert "pruned" not in c.status()["unavailable_variants"]
        assert counts.ok > 50 and counts.failed == 0, counts
        assert d.log().count('"variant_out_of_service"') == 5
    finally:
        assert d.stop() == 0


def test_the_configuration_leaves_a_bad_variant_before_it_is_retired(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In process, the order the daemon test cannot time: when the reload retires a variant, the
    configuration in force (and a pin) has already moved off it, so a worker that starts a
    request naming no variant at that moment never finds its configuration out of service."""
    zoo_dir = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)})
    runner = Runner(open_zoo(zoo_dir, SessionSettings(intra_threads=1)), Config("a", 1.0), 1, 1)
    loop = AdaptiveLoop(runner, FixedTelemetry(), None, Metrics(), 1, tmp_path)
    in_force_at_retire: list[Config] = []
    retire = runner.health.retire

    def watched(variant: str, reason: str) -> None:
        in_force_at_retire.append(runner.current)
        retire(variant, reason)

    monkeypatch.setattr(runner.health, "retire", watched)
    runner.pin(Config("a", 1.0), 600, "maintenance")
    (zoo_dir / "a.onnx").write_bytes((zoo_dir / "b.onnx").read_bytes())
    assert set(loop.recheck_zoo()) == {"a"}
    assert in_force_at_retire == [Config("b", 1.0)] and runner.pin_state is None
    assert "a is out of service" in runner.reason and "SHA-256 mismatch" in runner.reason
    runner.close()


class FixedTelemetry:
    def read(self, now: float) -> Snapshot:
        return Snapshot(time=now)
