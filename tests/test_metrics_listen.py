"""The TCP metrics listener (`metrics_listen`): the setting's validation, then a real daemon
that serves read-only /metrics and /v2/health/* over TCP and nothing else, survives clients that
send garbage or stall, and refuses to start on a port already taken."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from agent.address import ListenAddress, parse_listen_address
from agent.errors import AgentError
from agent.settings import load_settings
from tests.daemon import DaemonProcess


def free_port() -> int:
    """A port nobody listens on now (the kernel's pick; a race with another process is possible
    but has not been seen on a test machine)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


# -- the setting -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ListenAddress("127.0.0.1", 9464)),
        ("0.0.0.0:1", ListenAddress("0.0.0.0", 1)),
        ("[::1]:9464", ListenAddress("::1", 9464)),
        ("[::]:65535", ListenAddress("::", 65535)),
        (" 10.0.0.7:9464 ", ListenAddress("10.0.0.7", 9464)),
    ],
)
def test_listen_address_accepts_ip_and_port(text: str, expected: ListenAddress) -> None:
    assert parse_listen_address(text) == expected
    assert parse_listen_address(str(expected)) == expected  # str() gives back a parseable form


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("9464", "is not HOST:PORT"),
        (":9464", "is not HOST:PORT"),
        ("localhost:9464", "is not an IP address"),
        ("::1:9464", "write an IPv6 address in brackets, [::1]:9464"),
        ("[::1:9464", "ends with ']'"),
        ("[127.0.0.1]:9464", "only IPv6 addresses go in brackets"),
        ("127.0.0.1:0", "from 1 to 65535"),
        ("127.0.0.1:65536", "from 1 to 65535"),
        ("127.0.0.1:http", "from 1 to 65535"),
        ("[fe80::1%eth0]:9464", "zoned IPv6 addresses (%eth0) are not supported"),
    ],
)
def test_listen_address_refuses_with_a_reason(text: str, says: str) -> None:
    with pytest.raises(AgentError) as caught:
        parse_listen_address(text)
    assert says in caught.value.message, caught.value.message


def test_metrics_listen_setting_is_off_by_default_and_normalized(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_AGENT_METRICS_LISTEN", raising=False)
    assert load_settings().metrics_listen is None
    monkeypatch.setenv("EDGE_AGENT_METRICS_LISTEN", " [0:0::1]:9464")
    assert load_settings().metrics_listen == "[::1]:9464"


def test_invalid_metrics_listen_is_one_clear_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EDGE_AGENT_METRICS_LISTEN", raising=False)
    config = tmp_path / "config.yaml"
    config.write_text("metrics_listen: gateway.local:9464\n")
    with pytest.raises(AgentError) as caught:
        load_settings(config)
    assert caught.value.message.startswith(f"{config}: invalid setting metrics_listen: 'gateway.local:9464': ")
    assert "not an IP address" in caught.value.message


# -- the daemon ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tcp_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, str]]:
    """A real daemon on the shipped zoo with the TCP listener on a free local port; short
    connection deadlines, so the bad-client tests end quickly."""
    port = free_port()
    env = {
        "EDGE_AGENT_METRICS_LISTEN": f"127.0.0.1:{port}",
        "EDGE_AGENT_HEADER_TIMEOUT_S": "1",
        "EDGE_AGENT_IDLE_TIMEOUT_S": "1",
        "EDGE_AGENT_WARMUP_RUNS": "1",
    }
    proc = DaemonProcess(tmp_path_factory.mktemp("tcp"), env=env).start()
    yield proc, f"http://127.0.0.1:{port}"
    assert proc.stop() == 0


def unix_get(proc: DaemonProcess, path: str) -> httpx.Response:
    """GET `path` over the daemon's Unix socket, with the headers (agent.client keeps only the body)."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(proc.socket_path)), timeout=10) as client:
        return client.get(f"http://edge-agent{path}")


def families(text: str) -> dict[str, tuple[str, frozenset[str], frozenset[frozenset[str]]]]:
    """Metric family -> (type, sample names, label-name sets): the format, without the values."""
    return {
        f.name: (f.type, frozenset(s.name for s in f.samples), frozenset(frozenset(s.labels) for s in f.samples))
        for f in text_string_to_metric_families(text)
    }


@pytest.mark.daemon
def test_tcp_metrics_are_the_unix_sockets_metrics(tcp_daemon: tuple[DaemonProcess, str]) -> None:
    proc, url = tcp_daemon
    httpx.get(f"{url}/metrics", timeout=10)  # the first request creates edge_agent_requests_total's first child
    over_tcp, over_unix = httpx.get(f"{url}/metrics", timeout=10), unix_get(proc, "/metrics")
    assert over_tcp.status_code == over_unix.status_code == 200
    assert over_tcp.headers["content-type"] == over_unix.headers["content-type"]
    assert over_tcp.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    tcp_families, unix_families = families(over_tcp.text), families(over_unix.text)
    assert tcp_families.keys() == unix_families.keys()
    assert {k: v[0] for k, v in tcp_families.items()} == {k: v[0] for k, v in unix_families.items()}
    assert "edge_agent_ready" in tcp_families and "edge_agent_variant_unavailable" in tcp_families
    ready = next(f for f in text_string_to_metric_families(over_tcp.text) if f.name == "edge_agent_ready")
    assert ready.samples[0].value == 1.0


@pytest.mark.daemon
def test_tcp_health_probes_answer_like_the_unix_socket(tcp_daemon: tuple[DaemonProcess, str]) -> None:
    proc, url = tcp_daemon
    for path in ("/v2/health/live", "/v2/health/ready"):
        tcp, unix = httpx.get(url + path, timeout=10), unix_get(proc, path)
        assert (tcp.status_code, tcp.json()) == (unix.status_code, unix.json()) == (200, {path[11:]: True})
    head = httpx.head(f"{url}/metrics", timeout=10)
    assert head.status_code == 200 and head.content == b""
    assert int(head.headers["content-length"]) > 1000


@pytest.mark.daemon
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/classify"),
        ("GET", "/v1/classify"),
        ("POST", "/v1/pin"),
        ("DELETE", "/v1/pin"),
        ("POST", "/v1/policy/reload"),
        ("GET", "/v1/status"),
        ("GET", "/v2"),
        ("GET", "/v2/models/full"),
        ("POST", "/v2/models/full/infer"),
        ("GET", "/docs"),
        ("GET", "/openapi.json"),
        ("GET", "/metrics/"),
    ],
)
def test_tcp_listener_serves_nothing_but_metrics_and_health(
    tcp_daemon: tuple[DaemonProcess, str], method: str, path: str
) -> None:
    proc, url = tcp_daemon
    with proc.client() as client:
        pinned_before = client.status()["config"]["pinned"]
    answer = httpx.request(method, url + path, content=b'{"config": "int8@0.5", "seconds": 60}', timeout=10)
    assert answer.status_code == 404, answer.text
    error = answer.json()["error"]
    message = error if path.startswith("/v2") else error["message"]
    assert "not served here" in message and "/metrics" in message
    with proc.client() as client:
        assert client.status()["config"]["pinned"] == pinned_before


@pytest.mark.daemon
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_tcp_listener_allows_only_get_and_head(tcp_daemon: tuple[DaemonProcess, str], method: str) -> None:
    _, url = tcp_daemon
    answer = httpx.request(method, f"{url}/metrics", timeout=10)
    assert answer.status_code == 405
    assert {m.strip() for m in answer.headers["allow"].split(",")} == {"GET", "HEAD"}  # in any order
    assert answer.json()["error"]["code"] == "method_not_allowed"


@pytest.mark.daemon
def test_status_shows_the_metrics_listener(tcp_daemon: tuple[DaemonProcess, str]) -> None:
    proc, url = tcp_daemon
    from typer.testing import CliRunner

    from agent.cli.main import app

    with proc.client() as client:
        assert f"http://{client.status()['metrics_listen']}" == url
    assert "metrics_listening" in proc.log() and url.removeprefix("http://") in proc.log()
    shown = CliRunner().invoke(app, ["status", "--socket", str(proc.socket_path)], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    assert f"metrics on {url}/metrics (read-only)" in shown.stdout


def _raw(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    conn = socket.create_connection((host, int(port)), timeout=10)
    return conn


def _read_all(conn: socket.socket) -> bytes:
    chunks = []
    while chunk := conn.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


@pytest.mark.daemon
def test_tcp_listener_survives_garbage_and_stalled_clients(tcp_daemon: tuple[DaemonProcess, str]) -> None:
    proc, url = tcp_daemon
    garbage = _raw(url)
    garbage.sendall(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4)
    answer = _read_all(garbage)
    assert answer.startswith(b"HTTP/1.1 400 ") and b'"invalid_http"' in answer
    garbage.close()
    # Headers begun and never finished: 408 once header_timeout_s (1 s here) has passed.
    slow = _raw(url)
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    started = time.monotonic()
    answer = _read_all(slow)
    assert answer.startswith(b"HTTP/1.1 408 ") and time.monotonic() - started < 30
    slow.close()
    # Connected and silent: closed after idle_timeout_s.
    silent = _raw(url)
    assert _read_all(silent) == b""
    silent.close()
    # Many connections held open at once do not keep the next scrape out.
    held = [_raw(url) for _ in range(50)]
    try:
        assert httpx.get(f"{url}/metrics", timeout=10).status_code == 200
    finally:
        for conn in held:
            conn.close()
    with proc.client() as client:
        assert client.ready()
    timeouts = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'edge_agent_connection_timeouts_total{phase="headers"}' in timeouts


@pytest.mark.daemon
def test_a_port_in_use_is_a_clear_start_error(tmp_path: Path) -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    taken.bind(("127.0.0.1", 0))
    taken.listen(1)
    address = f"127.0.0.1:{taken.getsockname()[1]}"
    proc = DaemonProcess(tmp_path / "d", env={"EDGE_AGENT_METRICS_LISTEN": address, "EDGE_AGENT_WARMUP_RUNS": "0"})
    try:
        proc.start(wait=False)
        assert proc.proc is not None
        assert proc.proc.wait(120) == 1
    finally:
        proc.close()
        taken.close()
    log = proc.log()
    assert "start_failed" in log
    assert f"cannot listen for metrics on {address}: Address already in use" in log, log[-2000:]
    assert not proc.socket_path.exists()  # nothing half-started is left behind
    assert any(m.startswith("STATUS=failed: cannot listen for metrics") for m in proc.messages), proc.messages


@pytest.mark.daemon
def test_an_invalid_metrics_listen_stops_the_start_with_exit_2(tmp_path: Path) -> None:
    proc = DaemonProcess(tmp_path / "d", env={"EDGE_AGENT_METRICS_LISTEN": "metrics.local:9464"})
    try:
        proc.start(wait=False)
        assert proc.proc is not None
        assert proc.proc.wait(60) == 2
    finally:
        proc.close()
    assert "metrics_listen: 'metrics.local:9464': host 'metrics.local' is not an IP address" in proc.log()
