"""agent.client against a stand-in server on a Unix socket (the standard library's, in a
thread): what it sends, how it reads answers and errors, and what it says when nobody answers."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.client import Client, ClientError, DaemonUnreachable


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
        if self.headers.get("X-Close"):  # hang up after this answer without saying so, as an idle timeout does
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
        client._pool.request("GET", "http://edge-agent/x", headers=[(b"X-Close", b"1")])  # the server hangs up silently
        assert client.status()["ok"] and client.ready()
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
