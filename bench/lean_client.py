"""A lean HTTP/1.1 client over the Unix socket (the standard library's http.client).

A camera application written in C, Go or Rust pays a small fraction of what a Python client
spends per request; the benchmarks measure the daemon with this one beside agent.client, so
that the daemon's own overhead is not hidden behind the client's.
"""

from __future__ import annotations

import http.client
import json
import socket
from pathlib import Path
from typing import Any


class UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self.unix_path)
        self.sock = sock


class LeanClient:
    """Keep-alive POSTs of a prepared body; reconnects when the daemon closed an idle connection."""

    def __init__(self, path: Path, timeout: float = 30.0) -> None:
        self.path, self.timeout = path, timeout
        self.conn = UnixHTTPConnection(path, timeout)

    def post(self, url: str, body: bytes, content_type: str) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            try:
                self.conn.request("POST", url, body=body, headers={"Content-Type": content_type})
                response = self.conn.getresponse()
                return response.status, dict(response.getheaders()), response.read()
            except (ConnectionError, http.client.RemoteDisconnected, http.client.CannotSendRequest):
                self.conn.close()
                self.conn = UnixHTTPConnection(self.path, self.timeout)
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def classify(self, body: bytes, content_type: str) -> dict[str, Any]:
        status, _, data = self.post("/v1/classify", body, content_type)
        if status != 200:
            raise RuntimeError(f"classify answered {status}: {data[:200]!r}")
        answer: dict[str, Any] = json.loads(data)
        return answer

    def close(self) -> None:
        self.conn.close()
