"""Hostile local clients against the real daemon on a temp socket (issue 20): connections that
hold inference bodies open or dribble them cost the other clients nothing, a v2 body of nested
arrays does not stop the event loop, image bombs are refused from their header, truncated
images are refused. The probes are tests/hostile.py's (bench/hostile.py runs them for figures);
the bounds are the issue's, generous next to what a quiet machine shows."""

from __future__ import annotations

import io
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agent.daemon.preflight import raise_fd_limit
from agent.errors import AgentError, Overloaded, PayloadTooLarge
from agent.serving.budget import ByteBudget
from agent.serving.codec import image_cost, open_image
from agent.serving.listener import bind_unix
from agent.zoo.preprocess import to_rgb8
from tests import hostile
from tests.daemon import DaemonProcess
from tests.samples import agreed_png

HOLDERS = 300
CONTROL_MS, CLASSIFY_MS, NOISE_MS = 100.0, 1000.0, 250.0


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    raise_fd_limit()  # this process holds hundreds of connections too
    proc = DaemonProcess(tmp_path_factory.mktemp("hostile")).start()
    for path in ("/v1/status", "/v2/health/ready", "/metrics"):  # first calls pay for lazy set-up
        hostile.request(proc.socket_path, "GET", path)
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


@pytest.fixture(scope="module")
def png(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return agreed_png(tmp_path_factory.mktemp("img")).read_bytes()


def metric(daemon: DaemonProcess, pattern: str) -> float:
    text = hostile.request(daemon.socket_path, "GET", "/metrics").body.decode()
    found = re.search(pattern, text, re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.daemon
@pytest.mark.parametrize("rate", [0, 1], ids=["bodies_held_open", "bodies_at_1_byte_a_second"])
def test_status_health_and_admin_answer_within_100ms_and_classify_within_1s_while_300_connections_hold_bodies(
    daemon: DaemonProcess, png: bytes, rate: int
) -> None:
    cut_before = metric(daemon, r'^edge_agent_connection_timeouts_total\{phase="body_rate"\} (\S+)$')
    with hostile.holding(daemon.socket_path, HOLDERS, rate) as load:
        rounds = hostile.probe_rounds(daemon.socket_path, png, seconds=5.0)
    assert len(rounds) >= 5
    seen = [[(a.status, round(a.ms, 1)) for a in (r.status, r.ready, r.pin, r.classify)] for r in rounds]
    control = [answer for r in rounds for answer in (r.status, r.ready, r.pin)]
    assert all(answer.status == 200 for answer in control), seen
    # The bound is the issue's; bench/hostile reports the figures. A shared 2-core machine may
    # delay one answer past it (a quiet one shows a worst of some 65 ms), so one is let through
    # up to NOISE_MS; starved slots would show as seconds, on many answers.
    late = [answer.ms for answer in control if answer.ms > CONTROL_MS]
    assert len(late) <= 1 and all(ms <= NOISE_MS for ms in late), seen
    assert all(r.classify.status == 200 and r.classify.ms <= CLASSIFY_MS for r in rounds), seen
    # Every holder was cut by the minimum body rate (after its 2 s grace, not body_timeout_s's
    # 30 s) with a 408, and reopened: none was refused for want of a place.
    assert load.opened >= 2 * HOLDERS and set(load.answers) == {408}, load
    cut = metric(daemon, r'^edge_agent_connection_timeouts_total\{phase="body_rate"\} (\S+)$') - cut_before
    assert cut >= HOLDERS
    assert hostile.request(daemon.socket_path, "DELETE", "/v1/pin").status == 200


@pytest.mark.daemon
def test_health_live_p99_is_under_50ms_with_three_7mb_nested_array_bodies_in_flight(daemon: DaemonProcess) -> None:
    body = hostile.nested_v2_body()
    assert len(body) >= 6_900_000 and body.count(b"[") >= 170_000
    latencies, load = hostile.live_latencies(daemon.socket_path, body, senders=3, seconds=5.0)
    assert len(latencies) >= 100
    assert hostile.percentile(latencies, 99) <= 50.0, sorted(latencies)[-10:]
    assert load.opened >= 3 and set(load.answers) <= {200, 503}, load  # each answered: classified or shed


@pytest.mark.daemon
def test_four_image_bombs_at_once_cost_at_most_200mb_and_are_refused_from_their_header(
    daemon: DaemonProcess, png: bytes
) -> None:
    bombs = hostile.image_bombs()
    assert all(len(data) < 300_000 for _, data in bombs.values())
    four = [bombs["png"], bombs["tiff"], bombs["webp"], bombs["png"]]
    calls = [
        lambda kind=kind, data=data: hostile.request(
            daemon.socket_path, "POST", "/v1/classify", data, {"Content-Type": kind}
        )
        for kind, data in four
    ]
    growth, answers = hostile.peak_rss_growth_mib(daemon.proc.pid, lambda: hostile.concurrently(calls))  # type: ignore[union-attr]
    assert growth <= 200, growth
    assert len(answers) == 4  # type: ignore[arg-type]
    for answer in answers:  # type: ignore[union-attr]
        assert answer.status == 413 and b"max_decoded_bytes" in answer.body, answer
    assert hostile.request(daemon.socket_path, "POST", "/v1/classify", png, {"Content-Type": "image/png"}).status == 200


@pytest.mark.daemon
def test_a_truncated_jpeg_declaring_6000x6000_is_refused_with_400(daemon: DaemonProcess) -> None:
    jpeg = hostile.truncated_jpeg()
    assert len(jpeg) < 700
    answer = hostile.request(daemon.socket_path, "POST", "/v1/classify", jpeg, {"Content-Type": "image/jpeg"})
    assert answer.status == 400 and b"truncated" in answer.body, answer


@pytest.mark.daemon
def test_an_rgba_frame_within_the_budget_is_classified(daemon: DaemonProcess, png: bytes) -> None:
    rgba = Image.open(io.BytesIO(png)).convert("RGBA").resize((2000, 2000))
    buf = io.BytesIO()
    rgba.save(buf, format="PNG")
    answer = hostile.request(daemon.socket_path, "POST", "/v1/classify", buf.getvalue(), {"Content-Type": "image/png"})
    assert answer.status == 200, answer


def test_rgba_is_composited_on_black_as_before_without_a_background_image() -> None:
    rng = np.random.default_rng(0)
    for mode, channels in (("RGBA", 4), ("LA", 2)):
        image = Image.fromarray(rng.integers(0, 256, (64, 48, channels), dtype=np.uint8), mode)
        background = Image.new("RGBA", image.size, (0, 0, 0, 255))
        expected = Image.alpha_composite(background, image.convert("RGBA")).convert("RGB")
        assert np.array_equal(np.asarray(to_rgb8(image)), np.asarray(expected)), mode


def test_the_decode_estimate_comes_from_the_header_and_counts_the_rgba_copies(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGBA", (1000, 800), (1, 2, 3, 4)).save(buf, format="PNG")
    image = open_image(buf.getvalue())
    assert image_cost(image, 128) == 1000 * 800 * (4 + 4 + 2 + 1)  # decoded, RGB, two masks, the reduced copy
    jpeg = io.BytesIO()
    Image.new("RGB", (3840, 2160)).save(jpeg, format="JPEG")
    frame = open_image(jpeg.getvalue())
    assert image_cost(frame, 128) == 480 * 270 * (4 + 1)  # decoded at 1/8 (draft)


def test_a_byte_budget_refuses_413_past_the_request_bound_and_503_past_the_total() -> None:
    budget = ByteBudget("decode memory", per_request=100, total=150, setting="max_decoded_bytes")
    with pytest.raises(PayloadTooLarge, match="max_decoded_bytes"):
        budget.reserve(101, "an image")
    held = budget.reserve(100, "an image")
    with pytest.raises(Overloaded) as refused:
        budget.reserve(60, "another")
    assert refused.value.retry_after_s > 0
    held.release()
    held.release()  # once only
    assert budget.in_use == 0
    budget.reserve(60, "another").release()


@pytest.mark.daemon
def test_a_policy_path_symlinked_to_a_secret_shows_the_secret_nowhere(tmp_path: Path) -> None:
    """Issue 20, point 7: the daemon starts on the fallback policy; the file's first line is in
    no status (not even an admin's), log line or metric."""
    secret = "hunter2-secret-token"
    target = tmp_path / "shadow"
    target.write_text(f"root:$6${secret}:19000:0:99999:7:::\n{secret}: 1\n")
    target.chmod(0o600)
    link = tmp_path / "policy.yaml"
    link.symlink_to(target)
    proc = DaemonProcess(tmp_path / "d", args=["--policy", str(link)]).start()
    try:
        status = hostile.request(proc.socket_path, "GET", "/v1/status")
        assert status.status == 200 and b"unknown key" in status.body  # the error is there, the secret not
        reload = hostile.request(proc.socket_path, "POST", "/v1/policy/reload")
        metrics = hostile.request(proc.socket_path, "GET", "/metrics")
        for answer in (status, reload, metrics):
            assert secret.encode() not in answer.body
    finally:
        assert proc.stop() == 0
    assert secret not in proc.log()


def test_a_socket_another_uid_left_is_reported_as_such_not_as_a_running_daemon() -> None:
    """Issue 20, point 8: connect() answers EACCES; the daemon (here a forked child that drops
    to uid 65534, as a daemon of another user would run) says whose socket it is."""
    nobody = 65534
    base = Path(tempfile.mkdtemp(prefix="edge-agent-eacces-"))
    try:
        base.chmod(0o711)
        folder = base / "run"
        folder.mkdir(mode=0o750)
        os.chown(folder, nobody, nobody)
        path = folder / "edge-agent.sock"
        root_socket = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        root_socket.bind(str(path))
        path.chmod(0o600)  # root's, closed to others
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: another user's daemon starting on the same path
            code = 1
            try:
                os.setgroups([])
                os.setresgid(nobody, nobody, nobody)
                os.setresuid(nobody, nobody, nobody)
                try:
                    bind_unix(path, 0o660)
                    message = "bound"
                except AgentError as exc:
                    message = exc.message
                os.write(write, message.encode())
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        _, status = os.waitpid(pid, 0)
        message = os.read(read, 4096).decode()
        os.close(read)
        root_socket.close()
        assert status == 0, message
        assert "uid 0" in message and "may not connect" in message and "running daemon" not in message, message
        assert path.exists()  # not replaced
    finally:
        shutil.rmtree(base)


def test_a_jpeg_smaller_than_twice_the_input_is_estimated_at_full_size() -> None:
    jpeg = io.BytesIO()
    Image.new("RGB", (100, 60)).save(jpeg, format="JPEG")
    assert image_cost(open_image(jpeg.getvalue()), 128) == 100 * 60 * (4 + 1)
