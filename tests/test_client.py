"""agent.client against a stand-in server on a Unix socket (the standard library's, in a
thread): what it sends, how it reads answers and errors, and what it says when nobody answers:
the socket, how it was found (`agent.paths.locate_socket`), and what to do, from every client
command."""

from __future__ import annotations

import errno
import json
import os
import socket
import socketserver
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent import paths
from agent.client import Client, ClientError, DaemonUnreachable, _unreachable


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        self.seen.append(
            {"method": self.command, "path": self.path, "type": self.headers.get("Content-Type"), "body": body}
        )
        if self.command == "POST" and self.path.startswith("/v1/pin"):
            status, answer = 422, {"error": {"code": "invalid_request", "message": "seconds: too small"}}
        elif self.path.startswith("/plain"):
            status, answer = 502, None
        else:
            status, answer = 200, {"ok": True, "path": self.path}
        data = json.dumps(answer).encode() if answer is not None else b"bad gateway"
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.path.startswith("/hangup"):  # hang up after this answer without saying so, as an idle timeout does
            self.close_connection = True
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *args: Any) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("H", (Handler,), {"seen": seen})
    path = tmp_path / "s.sock"
    server = Server(str(path), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield path, seen
    server.shutdown()
    server.server_close()


def test_classify_sends_the_body_its_type_and_query_and_reads_the_json_answer(
    served: tuple[Path, list[dict[str, Any]]],
) -> None:
    path, seen = served
    with Client(path) as client:
        answer = client.classify(b"\x89PNG...", "image/png", deadline_ms=50, explain=True)
        client.classify(np.zeros((3, 2, 2), np.float32))
    assert answer["ok"] and answer["path"] == "/v1/classify?deadline_ms=50&explain=true"
    assert (seen[0]["method"], seen[0]["type"], seen[0]["body"]) == ("POST", "image/png", b"\x89PNG...")
    assert seen[1]["type"] == "application/x-npy" and seen[1]["body"].startswith(b"\x93NUMPY")


def test_an_error_answer_is_a_client_error_with_its_code(served: tuple[Path, list[dict[str, Any]]]) -> None:
    path, seen = served
    with Client(path) as client:
        with pytest.raises(ClientError) as refused:
            client.pin("full@1", -1)
        assert (refused.value.status, refused.value.code) == (422, "invalid_request")
        assert json.loads(seen[0]["body"]) == {"config": "full@1", "seconds": -1, "reason": "maintenance"}
        with pytest.raises(ClientError) as plain:
            client._answer("GET", "/plain")
        assert (plain.value.status, plain.value.code, plain.value.message) == (502, "http_error", "bad gateway")


def test_the_connection_is_kept_and_reopened_once_the_server_closed_it(
    served: tuple[Path, list[dict[str, Any]]],
) -> None:
    path, seen = served
    with Client(path) as client:
        assert client.status()["ok"] and client.reload()["ok"] and client.unpin()["ok"]
        assert client.request("GET", "/v1/status", content_type="text/plain")[0] == 200
        client.request("GET", "/hangup")  # the server hangs up silently
        assert client.status()["ok"] and client.ready()
        client.request("GET", "/hangup")
        client._idle[0].closed_by_peer = lambda: False  # type: ignore[method-assign]  # closed as it is taken
        assert client.status()["ok"]
    assert [s["method"] for s in seen][:3] == ["GET", "POST", "DELETE"]


def test_calls_from_several_threads_at_once_are_all_answered(served: tuple[Path, list[dict[str, Any]]]) -> None:
    path, seen = served
    with Client(path) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: client.status(), range(16)))
    assert all(a["ok"] for a in answers) and len(seen) == 16


def test_nobody_listening_is_daemon_unreachable(tmp_path: Path) -> None:
    with Client(tmp_path / "none.sock", timeout=1) as client:
        with pytest.raises(DaemonUnreachable, match=r"none\.sock"):
            client.status()
        assert not client.ready()


# -- which socket, and what an error says about it -------------------------------------------------


@pytest.fixture
def service_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The service's runtime directory moved to tmp_path, no variable set, a checkout as cwd."""
    for name in ("EDGE_AGENT_SOCKET", "RUNTIME_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    service = tmp_path / "run-edge-agent"
    monkeypatch.setattr(paths, "SERVICE_RUNTIME_DIR", service)
    return service


def _stale_socket(path: Path) -> Path:
    """A socket file nothing listens on, as a daemon killed with SIGKILL leaves behind."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def test_an_unreachable_daemon_is_named_with_how_its_socket_was_chosen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    missing = tmp_path / "none.sock"
    monkeypatch.setenv("EDGE_AGENT_SOCKET", str(missing))
    with Client(timeout=1) as client, pytest.raises(DaemonUnreachable) as caught:
        client.status()
    assert str(caught.value) == (
        f"cannot reach the daemon at {missing} ($EDGE_AGENT_SOCKET): No such file or directory; "
        "start it or pass --socket"
    )


def test_a_stale_service_socket_is_named_as_the_services(service_dir: Path) -> None:
    stale = _stale_socket(service_dir / paths.SOCKET_NAME)
    with Client(timeout=1) as client, pytest.raises(DaemonUnreachable) as caught:
        client.status()
    assert str(caught.value).startswith(
        f"cannot reach the daemon at {stale} (the service's socket): Connection refused"
    )
    assert "start it or pass --socket" in str(caught.value)


def test_a_socket_closed_to_this_user_says_who_may_connect() -> None:
    """Root is never refused, so the refusal is made here as the socket's connect reports it."""
    where = paths.Located(Path("/run/edge-agent/edge-agent.sock"), "the service's socket")
    message = str(_unreachable(where, PermissionError(errno.EACCES, os.strerror(errno.EACCES))))
    assert message.startswith(f"cannot reach the daemon at {where.path} (the service's socket): Permission denied")
    assert "member of the socket's group" in message


@pytest.mark.parametrize(
    "args",
    [
        ["status"],
        ["status", "--json"],
        ["pin", "int8@0.5"],
        ["unpin"],
        ["classify", "IMAGE"],
        ["policy", "reload"],
        ["policy", "reload", "--json"],
    ],
)
def test_every_client_command_names_the_socket_it_tried_and_how(
    service_dir: Path, tmp_path: Path, args: list[str]
) -> None:
    from typer.testing import CliRunner

    from agent.cli.main import app

    stale = _stale_socket(service_dir / paths.SOCKET_NAME)
    image = tmp_path / "x.png"
    image.write_bytes(b"\x89PNG")
    result = CliRunner().invoke(app, [str(image) if a == "IMAGE" else a for a in args])
    assert result.exit_code == 1
    assert f"cannot reach the daemon at {stale} (the service's socket): Connection refused" in result.output
    assert "Traceback" not in result.output


def test_telemetry_record_says_which_socket_it_found_no_daemon_on(service_dir: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agent.cli.main import app

    stale = _stale_socket(service_dir / paths.SOCKET_NAME)
    out = tmp_path / "trace.jsonl"
    result = CliRunner().invoke(
        app, ["telemetry", "record", "--out", str(out), "--seconds", "0.1", "--interval", "0.1"]
    )
    assert result.exit_code == 0, result.output
    assert f"no daemon on {stale} (the service's socket)" in result.output.replace("\n", "")  # rich wraps at 80
