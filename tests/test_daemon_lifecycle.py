"""The daemon as systemd runs it: readiness, watchdog, socket activation, shutdown under load,
socket ownership, configuration switches under load, and admin access by uid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from agent.client import Client, ClientError
from model_zoo import data
from tests.daemon import REPO, DaemonProcess

pytestmark = pytest.mark.daemon  # every test here talks to a daemon subprocess


def test_ready_only_after_models_load_then_watchdog_pings(tmp_path: Path, sample_png: Path) -> None:
    d = DaemonProcess(tmp_path, env={"WATCHDOG_USEC": "200000"}).start()
    try:
        ready_index = next(i for i, m in enumerate(d.messages) if "READY=1" in m)
        earlier = " ".join(d.messages[:ready_index])
        assert "STATUS=loading model zoo" in earlier and "STATUS=warming up" in earlier
        log = d.log()
        assert log.count('"variant_loaded"') >= 4 and '"zoo_ready"' in log  # loaded before READY=1 was sent
        with d.client() as client:
            assert client.classify(sample_png)["label"] == "scratch"  # serving the moment READY=1 arrived
        pings_before = sum("WATCHDOG=1" in m for m in d.messages)
        d.wait_for("WATCHDOG=1", timeout=5)
        while sum("WATCHDOG=1" in m for m in d.messages) < pings_before + 3:
            d.messages.append(d.notify.recv(4096).decode())  # type: ignore[union-attr]
    finally:
        assert d.stop() == 0
    assert any("STOPPING=1" in m for m in d.messages)


def test_socket_activation_with_fd_3(tmp_path: Path, sample_png: Path) -> None:
    path = tmp_path / "activated.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(16)
    fd = listener.fileno()

    def as_fd_3() -> None:
        os.dup2(fd, 3)

    # systemd sets LISTEN_PID to the service's pid after fork; a shell that execs does the same.
    d = DaemonProcess(tmp_path / "d", env={"LISTEN_FDS": "1"}, prefix=["sh", "-c", 'LISTEN_PID=$$ exec "$@"', "sh"])
    d.start(pass_fds=tuple({fd, 3}), preexec=as_fd_3)  # 3 must survive close_fds after the dup2
    try:
        with Client(path) as client:
            assert client.classify(sample_png)["label"] == "scratch"
        assert not d.socket_path.exists(), "with socket activation the daemon must not bind its own socket"
    finally:
        assert d.stop() == 0
        listener.close()
    assert path.exists(), "the activated socket belongs to systemd and must not be removed"


def test_sigterm_with_50_requests_in_flight_answers_all_and_exits_0(tmp_path: Path) -> None:
    # One worker, so that 50 slow requests queue up rather than drain as fast as they arrive.
    # A drain timeout far beyond the work queued: on a busy machine 50 big PNGs take a while.
    env = {"EDGE_AGENT_QUEUE_SIZE": "80", "EDGE_AGENT_WORKERS": "1", "EDGE_AGENT_DRAIN_TIMEOUT_S": "300"}
    d = DaemonProcess(tmp_path, env=env).start()
    big = data.sample(0, "test", 1).image
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(big).resize((1600, 1600)).save(buf, format="PNG")  # slow enough to keep 50 in flight
    body = buf.getvalue()
    results: list[int | str] = []
    lock = threading.Lock()

    def one() -> None:
        code: int | str
        with d.client(timeout=300) as client:
            try:
                client.classify(body, "image/png")
                code = 200
            except ClientError as exc:
                code = exc.status
            except Exception as exc:  # a transport error: recorded, so the assertion shows it
                code = type(exc).__name__
        with lock:
            results.append(code)

    threads = [threading.Thread(target=one) for _ in range(50)]
    for t in threads:
        t.start()
    with d.client() as client:
        # Every request admitted (a connection whose request has not arrived yet is closed at
        # SIGTERM, as it should be), and most still in flight.
        deadline = time.monotonic() + 30
        inflight = done = 0
        while (inflight < 40 or inflight + done < 50) and time.monotonic() < deadline:
            with lock:
                done = len(results)  # read first: a request finishing meanwhile is counted in neither
            inflight = client.status()["queue"]["inflight"]
    assert inflight >= 40 and inflight + done >= 50, f"only {inflight} in flight, {done} done"
    d.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    for t in threads:
        t.join(300)
    code = d.stop()
    assert code == 0
    assert results.count(200) == 50, results
    assert not d.socket_path.exists()


def test_stale_socket_is_replaced_and_live_socket_is_not_stolen(tmp_path: Path, sample_png: Path) -> None:
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(tmp_path / "edge-agent.sock"))
    stale.close()  # a socket file nobody listens on, as left by a crash
    first = DaemonProcess(tmp_path).start()
    try:
        with first.client() as client:
            assert client.classify(sample_png)["label"] == "scratch"
        second = DaemonProcess(tmp_path, env={}).start(wait=False)
        assert second.proc.wait(60) == 1  # type: ignore[union-attr]
        assert "in use by a running daemon" in second.log()
        second.close()
        with first.client() as client:
            assert client.status()["ready"]
        assert stat.S_IMODE(first.socket_path.stat().st_mode) == 0o660
    finally:
        assert first.stop() == 0


def test_corrupt_variant_at_start_is_left_out_and_reported(tmp_path: Path, zoo_copy: Path, sample_png: Path) -> None:
    (zoo_copy / "pruned.onnx").write_bytes(b"\x00" * 100)
    d = DaemonProcess(tmp_path / "d", args=["--zoo", str(zoo_copy)]).start()
    try:
        with d.client() as client:
            st = client.status()
            assert "pruned" in st["failed_variants"] and "SHA-256" in st["failed_variants"]["pruned"]
            assert "pruned" not in st["variants"] and "full" in st["variants"]
            assert client.classify(sample_png)["label"] == "scratch"
    finally:
        d.stop()


def test_refuses_to_start_when_no_variant_loads(tmp_path: Path, zoo_copy: Path) -> None:
    for f in zoo_copy.glob("*.onnx"):
        f.write_bytes(b"junk")
    d = DaemonProcess(tmp_path / "d", args=["--zoo", str(zoo_copy)]).start(wait=False)
    assert d.proc.wait(60) == 1  # type: ignore[union-attr]
    assert "no variant" in d.log()
    d.close()


def test_1000_switches_under_4_clients_lose_nothing(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path).start()
    configs = ["full@1", "int8@0.5", "pruned@0.7", "lowres@1", "full@0.25"]
    images = [data.sample(0, "test", i).image.transpose(2, 0, 1).astype("float32") / 255 for i in range(5)]
    stop = threading.Event()
    answers: list[tuple[float, float, str]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def stream(k: int) -> None:
        with d.client() as client:
            i = 0
            while not stop.is_set():
                sent = time.monotonic()
                try:
                    a = client.classify(images[(i + k) % 5])
                except Exception as exc:  # any failure is a test failure
                    with lock:
                        failures.append(repr(exc))
                    continue
                with lock:
                    answers.append((sent, time.monotonic(), f"{a['variant']}@{a['budget']:g}"))
                i += 1

    switches: list[tuple[float, float, str]] = []  # (sent, answered, config)
    with d.client() as admin:  # pin before the stream starts: the controller may not move it meanwhile
        sent = time.monotonic()
        admin.pin(configs[0], 600, "switch test")
        switches.append((sent, time.monotonic(), configs[0]))
    threads = [threading.Thread(target=stream, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    try:
        with d.client() as admin:
            for n in range(1, 1001):
                cfg = configs[n % len(configs)]
                sent = time.monotonic()
                admin.pin(cfg, 600, "switch test")
                switches.append((sent, time.monotonic(), cfg))
            admin.unpin()
    finally:
        stop.set()
        for t in threads:
            t.join(30)
        assert d.stop() == 0
    assert failures == []
    assert len(answers) > 100
    # Config i was in force at most from when its pin was sent until the next pin was answered.
    windows = [
        (s[0], switches[i + 1][1] if i + 1 < len(switches) else float("inf"), s[2]) for i, s in enumerate(switches)
    ]
    for sent, done, cfg in answers:
        if done < switches[0][0]:
            assert cfg == "full@1"
            continue
        assert any(c == cfg and start <= done and sent <= end for start, end, c in windows), (sent, done, cfg)


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv to act as another uid"
)
def test_admin_routes_refused_to_a_uid_not_allowed(tmp_path_factory: pytest.TempPathFactory) -> None:
    base = Path("/tmp") / f"edge-agent-acl-{os.getpid()}"
    base.mkdir(mode=0o755, exist_ok=True)
    try:
        d = DaemonProcess(base, env={"EDGE_AGENT_SOCKET_MODE": str(0o666)}).start()
        script = (
            "import sys, json; from agent.client import Client, ClientError\n"
            f"c = Client(__import__('pathlib').Path('{d.socket_path}'))\n"
            "out = {'status': c.status()['ready']}\n"
            "for name, call in (('pin', lambda: c.pin('int8@0.5', 60)), ('unpin', c.unpin), ('reload', c.reload)):\n"
            "    try:\n        call(); out[name] = 200\n"
            "    except ClientError as e:\n        out[name] = [e.status, e.code]\n"
            "print(json.dumps(out))\n"
        )
        result = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        assert result.returncode == 0, result.stderr
        import json

        out = json.loads(result.stdout)
        assert out == {
            "status": True,
            "pin": [403, "forbidden"],
            "unpin": [403, "forbidden"],
            "reload": [403, "forbidden"],
        }
        with d.client() as client:
            assert client.status()["config"]["pinned"] is None
            assert client.pin("int8@1", 60)["config"] == "int8@1"  # root is allowed
        # The socket's own mode and group decide who may connect at all: 0660 keeps uid 65534
        # out until the socket's group is its group (under systemd: the service's group).
        connect = "import socket, sys; s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); print('connected')"
        as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", connect]
        os.chmod(d.socket_path, 0o660)
        refused = subprocess.run([*as_nobody, str(d.socket_path)], capture_output=True, text=True, timeout=30)
        assert refused.returncode != 0 and "PermissionError" in refused.stderr
        os.chown(d.socket_path, -1, 65534)
        allowed = subprocess.run([*as_nobody, str(d.socket_path)], capture_output=True, text=True, timeout=30)
        assert allowed.stdout.strip() == "connected", allowed.stderr
        assert d.stop() == 0
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_notify_never_blocks_when_nobody_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from agent.daemon import sdnotify

    path = tmp_path / "notify.sock"
    unread = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    unread.bind(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    started = time.monotonic()
    sent = [sdnotify.notify(f"STATUS=message {i}") for i in range(200)]
    assert time.monotonic() - started < 2.0
    assert sent[0] is True and sent[-1] is False  # the queue filled up; later messages were dropped
    unread.close()


def thread_nice(pid: int, tid: int) -> int:
    fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[16])  # field 19 of proc_pid_stat(5); fields[0] is field 3


@pytest.mark.skipif(os.geteuid() != 0, reason="raising a thread's priority needs root or CAP_SYS_NICE")
def test_loop_priority_raises_the_loop_thread_and_not_the_workers(tmp_path: Path, sample_png: Path) -> None:
    d = DaemonProcess(tmp_path / "d", env={"EDGE_AGENT_LOOP_PRIORITY": "5", "EDGE_AGENT_WORKERS": "2"}).start()
    try:
        with d.client() as c, ThreadPoolExecutor(4) as pool:  # both workers start
            assert all(a["label"] for a in pool.map(lambda _: c.classify(sample_png), range(8)))
            assert c.status()["queue"]["loop_priority"] == 5
        assert d.proc is not None
        base = os.getpriority(os.PRIO_PROCESS, 0)
        assert thread_nice(d.proc.pid, d.proc.pid) == base - 5  # the main thread runs the event loop
        started = [json.loads(line) for line in d.log().splitlines() if '"worker_started"' in line]
        assert len([s for s in started if s["name"].startswith("ort-worker")]) == 2
        assert all(thread_nice(d.proc.pid, s["tid"]) == base for s in started)  # decode threads too
    finally:
        d.stop()
