"""A lean HTTP/1.1 client over the Unix socket (the standard library's http.client).

A camera application written in C, Go or Rust pays a small fraction of what a Python client
spends per request; the benchmarks measure the daemon with this one beside agent.client, so
that the daemon's own overhead is not hidden behind the client's. It shares agent.client's
connection class (http.client to a Unix socket) and nothing else: no pool, no error mapping.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

from agent.client import UnixHTTPConnection


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
