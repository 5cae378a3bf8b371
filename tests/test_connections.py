"""Connection faults against the real daemon over its real Unix socket: a client that dribbles
its headers, stalls mid-body, opens connections and sends nothing, or hangs up mid-request
costs the others nothing and leaks no work. The daemon runs with small timeouts (set through
EDGE_AGENT_* variables) so that each fault is seen through within a few seconds."""

from __future__ import annotations

import io
import itertools
import json
import re
import resource
import selectors
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from PIL import Image

from agent.daemon.preflight import raise_fd_limit
from agent.errors import AgentError
from agent.settings import load_settings
from model_zoo import data
from tests.daemon import DaemonProcess

IDLE_S, HEADER_S, BODY_S = 5.0, 2.0, 1.5
SLACK_S = 15.0  # a generous upper bound on top of a timeout: the machine may be busy
BODIES_INFLIGHT = 2 * 1024 * 1024  # max_body_bytes_inflight: a hundred stalled classify bodies


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    env = {
        "EDGE_AGENT_IDLE_TIMEOUT_S": str(IDLE_S),
        "EDGE_AGENT_HEADER_TIMEOUT_S": str(HEADER_S),
        "EDGE_AGENT_BODY_TIMEOUT_S": str(BODY_S),
        "EDGE_AGENT_MAX_BODY_BYTES_INFLIGHT": str(BODIES_INFLIGHT),
    }
    raise_fd_limit()  # this process holds a thousand connections too
    proc = DaemonProcess(tmp_path_factory.mktemp("connections"), env=env).start()
    yield proc
    assert proc.stop() == 0, proc.log()[-3000:]


@pytest.fixture(scope="module")
def png() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(data.sample(0, "test", 1).image).save(buf, format="PNG")
    return buf.getvalue()


def connect(daemon: DaemonProcess) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.connect(str(daemon.socket_path))
    return conn


def classify_request(png: bytes) -> bytes:
    head = f"POST /v1/classify HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\nContent-Length: {len(png)}\r\n\r\n"
    return head.encode() + png


def stalled_request(png: bytes) -> bytes:
    """A classify request's headers and the first bytes of its body, and then nothing."""
    return classify_request(png)[: -len(png) + 16]


def read_to_eof(conn: socket.socket, timeout: float) -> bytes:
    """Everything the daemon sends until it closes the connection (fails if it never does)."""
    conn.settimeout(timeout)
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def assert_json_408(answer: bytes) -> None:
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer[:300]
    assert b"connection: close" in head.lower()
    error = json.loads(body)["error"]
    assert error["code"] == "request_timeout" and error["message"], error


def assert_classifies(daemon: DaemonProcess, png: bytes) -> None:
    with daemon.client() as client:
        assert client.classify(png, "image/png")["label"] in data.CLASSES


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `check` (a daemon-side count has no event to await) until it holds."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        time.sleep(0.05)


def inflight(daemon: DaemonProcess) -> int:
    with daemon.client() as client:
        return int(client.status()["queue"]["inflight"])


def timeouts(daemon: DaemonProcess, phase: str) -> float:
    with daemon.client() as client:
        found = re.search(rf'^edge_agent_connection_timeouts_total\{{phase="{phase}"\}} (\S+)$', client.metrics(), re.M)
    return float(found.group(1)) if found else 0.0


@pytest.mark.daemon
def test_slowloris_headers_get_408_within_the_header_timeout_while_others_are_served(
    daemon: DaemonProcess, png: bytes
) -> None:
    dribbling = threading.Event()
    answer: list[bytes] = []
    after_s: list[float] = []

    def dribble() -> None:
        conn = connect(daemon)
        started = time.monotonic()
        head = itertools.chain(b"POST /v1/classify HTTP/1.1\r\n", itertools.cycle(b"x-slow: 1\r\n"))
        try:
            for byte in head:
                conn.send(bytes([byte]))
                dribbling.set()
                conn.settimeout(0.05)
                try:
                    if first := conn.recv(65536):
                        answer.append(first + read_to_eof(conn, SLACK_S))
                    break
                except TimeoutError:
                    if time.monotonic() - started > HEADER_S + SLACK_S:
                        break
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            after_s.append(time.monotonic() - started)
            conn.close()

    slow = threading.Thread(target=dribble)
    slow.start()
    assert dribbling.wait(SLACK_S)
    served_while_dribbling = 0
    for _ in range(3):
        assert_classifies(daemon, png)
        served_while_dribbling += slow.is_alive()
    slow.join(HEADER_S + 2 * SLACK_S)
    assert served_while_dribbling >= 1
    assert answer, "the dribbling connection got no answer"
    assert_json_408(answer[0])
    assert HEADER_S * 0.9 <= after_s[0] <= HEADER_S + SLACK_S
    assert timeouts(daemon, "headers") >= 1


@pytest.mark.daemon
def test_headers_past_the_size_bound_get_431_and_the_connection_is_closed(daemon: DaemonProcess, png: bytes) -> None:
    conn = connect(daemon)
    answer = b""
    try:
        conn.sendall(b"POST /v1/classify HTTP/1.1\r\nHost: x\r\n")
        filler = b"x-filler: " + b"a" * 1000 + b"\r\n"
        for _ in range(2000):  # 2 MB of headers, far past the 64 KiB default
            conn.sendall(filler)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon closed while we were still sending: its answer may already be in
    try:
        answer = read_to_eof(conn, SLACK_S)
    except ConnectionResetError:
        pass
    finally:
        conn.close()
    if answer:  # a reset can discard the answer when unsent headers were still queued
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 431 "), answer[:300]
        assert json.loads(body)["error"]["code"] == "headers_too_large"
    assert_classifies(daemon, png)


@pytest.mark.daemon
def test_a_thousand_idle_connections_lock_no_one_out_and_are_closed_after_the_idle_timeout(
    daemon: DaemonProcess, png: bytes
) -> None:
    idle: list[tuple[socket.socket, float]] = []
    try:
        for _ in range(1000):
            idle.append((connect(daemon), time.monotonic()))
        assert_classifies(daemon, png)
        with daemon.client() as client:
            assert client.status()["ready"] is True
        closed_after: list[float] = []
        with selectors.DefaultSelector() as sel:  # epoll: a thousand descriptors is past select()'s limit
            for conn, opened in idle:
                sel.register(conn, selectors.EVENT_READ, (conn, opened))
            deadline = time.monotonic() + IDLE_S + SLACK_S
            while len(closed_after) < len(idle) and time.monotonic() < deadline:
                for key, _ in sel.select(timeout=1.0):
                    conn, opened = key.data
                    assert conn.recv(1) == b""
                    closed_after.append(time.monotonic() - opened)
                    sel.unregister(conn)
    finally:
        for conn, _ in idle:
            conn.close()
    assert len(closed_after) == len(idle), f"{len(idle) - len(closed_after)} idle connections still open"
    assert min(closed_after) >= IDLE_S * 0.9
    assert timeouts(daemon, "idle") >= len(idle)
    assert_classifies(daemon, png)


@pytest.mark.daemon
def test_a_body_that_stalls_gets_408_within_the_body_timeout_and_holds_no_slot(
    daemon: DaemonProcess, png: bytes
) -> None:
    conns = [connect(daemon) for _ in range(5)]
    try:
        for conn in conns:
            conn.sendall(stalled_request(png))
        started = time.monotonic()
        for conn in conns:
            assert_json_408(read_to_eof(conn, BODY_S + SLACK_S))
        assert time.monotonic() - started >= BODY_S * 0.9
    finally:
        for conn in conns:
            conn.close()
    assert inflight(daemon) == 0
    assert timeouts(daemon, "body") >= len(conns)
    assert_classifies(daemon, png)


@pytest.mark.daemon
def test_bodies_past_the_body_memory_budget_get_a_json_503_and_stalled_ones_free_their_bytes(
    daemon: DaemonProcess, png: bytes
) -> None:
    """600 stalled bodies declare more than max_body_bytes_inflight (BODIES_INFLIGHT here): those
    past it are refused at once, the rest time out, and every byte is free again afterwards.
    None of them holds an inference place (tests/test_hostile.py: the others are served)."""
    conns = [connect(daemon) for _ in range(600)]
    try:
        for conn in conns:
            conn.sendall(stalled_request(png))
        answers = [read_to_eof(conn, BODY_S + SLACK_S) for conn in conns]
    finally:
        for conn in conns:
            conn.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503 ")]
    timed_out = [a for a in answers if not a.startswith(b"HTTP/1.1 503 ")]
    assert len(timed_out) <= BODIES_INFLIGHT // len(png) and refused
    for answer in refused:
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"retry-after: 1\r\n" in head.lower() and json.loads(body)["error"]["code"] == "overloaded"
        assert "body memory" in json.loads(body)["error"]["message"]
    for answer in timed_out:
        assert_json_408(answer)
    with daemon.client() as client:
        shed = re.search(r'^edge_agent_shed_total\{reason="body_memory"\} (\S+)$', client.metrics(), re.M)
    assert shed and float(shed.group(1)) >= len(refused)
    assert_classifies(daemon, png)


@pytest.mark.daemon
def test_clients_gone_before_their_answer_leak_no_work_or_queue_slot(daemon: DaemonProcess, png: bytes) -> None:
    conns = [connect(daemon) for _ in range(20)]
    try:
        for conn in conns:
            conn.sendall(classify_request(png))
        conns[0].settimeout(SLACK_S)
        assert conns[0].recv(1)  # the daemon is answering; the others are admitted or queued
    finally:
        for conn in conns:
            conn.close()
    wait_until(lambda: inflight(daemon) == 0, SLACK_S, "in-flight requests back to 0")
    assert_classifies(daemon, png)


@pytest.mark.daemon
def test_clients_gone_mid_body_leak_no_work_or_queue_slot(daemon: DaemonProcess, png: bytes) -> None:
    for _ in range(10):
        with connect(daemon) as conn:
            conn.sendall(classify_request(png)[:-10])
    wait_until(lambda: inflight(daemon) == 0, SLACK_S, "in-flight requests back to 0")
    assert_classifies(daemon, png)
    assert '"request_failed"' not in daemon.log()


@pytest.mark.daemon
def test_a_kept_alive_connection_answers_pipelined_requests_then_closes_when_idle(
    daemon: DaemonProcess, png: bytes
) -> None:
    """The idle phase that replaces uvicorn's keep-alive timer starts only once all is answered."""
    with connect(daemon) as conn:
        conn.sendall(classify_request(png) + b"GET /v2/health/live HTTP/1.1\r\nHost: x\r\n\r\n" + classify_request(png))
        started = time.monotonic()
        answers = read_to_eof(conn, IDLE_S + SLACK_S)
        closed_after = time.monotonic() - started
    assert answers.count(b"HTTP/1.1 200 OK\r\n") == answers.count(b"HTTP/1.1 ") == 3, answers[:500]
    assert closed_after >= IDLE_S * 0.9


def test_connection_timeouts_must_be_positive() -> None:
    with pytest.raises(AgentError, match=r"header_timeout_s: .*greater than 0"):
        load_settings(None, header_timeout_s=0)


def test_the_descriptor_soft_limit_is_raised_to_the_hard_one() -> None:
    """Under systemd the soft limit is 1024: a thousand connections would exhaust it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(256, hard), hard))
        raise_fd_limit()
        assert resource.getrlimit(resource.RLIMIT_NOFILE) == (hard, hard)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
