"""A small client for the daemon's Unix-socket API.

It speaks HTTP through the standard library's http.client, on kept-alive connections (one per
thread at a time, reopened when the daemon has closed one). httpx's request and response models
cost about a millisecond of Python per request, and httpcore's h11 state machine still half of
one: more than the daemon's whole serving path (bench/overhead measures the client beside a bare
http.client). Answers are parsed with orjson.
"""

from __future__ import annotations

import errno
import http.client
import io
import select
import socket as sockets
import threading
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import numpy as np
import orjson

from agent.paths import Located, locate_socket

CONTENT_TYPES = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".webp": "image/webp",
    ".npy": "application/x-npy",
}
#: A kept connection that fails with one of these before any answer was closed by the daemon
#: while idle (its idle timeout): the request is sent again, once, on a new connection.
_CLOSED_WHILE_IDLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError)


class ClientError(Exception):
    """An error answer from the daemon, with its stable code and HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class DaemonUnreachable(ConnectionError):
    """No answer: nothing listens on the socket, the connection broke, or the answer timed out.
    The message names the socket, how it was chosen, and what to do."""


#: What to do about a failed connect, by errno: the operator's next step, not the OS's words again.
_HINTS = {
    errno.ENOENT: "start it or pass --socket",
    errno.ECONNREFUSED: "nothing listens on it (a stopped daemon left it behind); start it or pass --socket",
    errno.EACCES: "connect as root or as a member of the socket's group (edge-agent for the service)",
}


def _unreachable(where: Located, exc: Exception) -> DaemonUnreachable:
    """The error for a connection that failed with `exc` (the OSError, or an error raised from one)."""
    cause: BaseException | None = exc
    while cause is not None and not (isinstance(cause, OSError) and cause.errno):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, OSError):
        reason = cause.strerror or str(cause)
        hint = _HINTS.get(cause.errno or 0)
    else:
        reason, hint = str(exc) or type(exc).__name__, None
    return DaemonUnreachable(f"cannot reach the daemon at {where}: {reason}" + (f"; {hint}" if hint else ""))


class UnixHTTPConnection(http.client.HTTPConnection):
    """http.client's connection, to a Unix socket."""

    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("edge-agent", timeout=timeout)
        self.unix_path = str(path)

    def connect(self) -> None:
        sock = sockets.socket(sockets.AF_UNIX, sockets.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock

    def closed_by_peer(self) -> bool:
        """Whether the daemon has closed this idle connection (its end is readable: EOF), as
        httpcore checks before reusing one."""
        if self.sock is None:
            return False
        poller = select.poll()  # not select.select: a descriptor past 1023 would not fit
        poller.register(self.sock, select.POLLIN)
        return bool(poller.poll(0))


class Client:
    """The daemon's API as methods. Connections are kept alive and reopened when the daemon
    has closed one; calls from several threads at once each get their own connection."""

    def __init__(self, socket: Path | Located | None = None, timeout: float = 30.0) -> None:
        """`socket`: a path, one found by `agent.paths.locate_socket` (its errors then say how it
        was chosen), or None for the discovery rule."""
        if socket is None:
            socket = locate_socket()
        self.where = socket if isinstance(socket, Located) else Located(socket, "as given")
        self.socket = self.where.path
        self.timeout = timeout
        self._idle: list[UnixHTTPConnection] = []  # kept alive, for the next call from any thread
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        content_type: str | None = None,
        query: dict[str, Any] | None = None,
    ) -> tuple[int, bytes]:
        """(status, body) of one request; DaemonUnreachable when no answer comes."""
        url = path + (f"?{urlencode(query)}" if query else "")
        headers = {"Content-Type": content_type} if content_type else {}
        conn, kept = self._connection()
        try:
            try:
                return self._exchange(conn, method, url, body, headers)
            except _CLOSED_WHILE_IDLE:
                if not kept:
                    raise
                conn.close()
                conn = UnixHTTPConnection(self.socket, self.timeout)
                return self._exchange(conn, method, url, body, headers)
        except TimeoutError as exc:
            conn.close()
            raise DaemonUnreachable(f"no answer from the daemon at {self.where} within {self.timeout:g} s") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise _unreachable(self.where, exc) from exc

    def _connection(self) -> tuple[UnixHTTPConnection, bool]:
        """An idle kept connection the daemon has not closed, or a new one; whether it was kept."""
        while True:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                return UnixHTTPConnection(self.socket, self.timeout), False
            if not conn.closed_by_peer():
                return conn, True
            conn.close()

    def _exchange(
        self, conn: UnixHTTPConnection, method: str, url: str, body: bytes, headers: dict[str, str]
    ) -> tuple[int, bytes]:
        """One request and its whole answer; the connection is kept for the next call unless
        the daemon said it closes it."""
        conn.request(method, url, body=body or None, headers=headers)
        response = conn.getresponse()
        content = response.read()
        if response.will_close:
            conn.close()
        else:
            with self._lock:
                self._idle.append(conn)
        return response.status, content

    def _answer(self, method: str, path: str, **kwargs: Any) -> bytes:
        status, content = self.request(method, path, **kwargs)
        if status >= 400:
            try:
                err = orjson.loads(content)["error"]
                raise ClientError(status, err["code"], err["message"])
            except (ValueError, KeyError, TypeError):
                raise ClientError(status, "http_error", content[:200].decode(errors="replace")) from None
        return content

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        return orjson.loads(self._answer(method, path, **kwargs))

    def classify(
        self,
        data: bytes | Path | np.ndarray,
        content_type: str | None = None,
        deadline_ms: float | None = None,
        explain: bool = False,
    ) -> dict[str, Any]:
        """Classify an image file, raw bytes (give `content_type`) or a float32 (3, H, W) array."""
        if isinstance(data, Path):
            content_type = content_type or CONTENT_TYPES.get(data.suffix.lower(), "application/octet-stream")
            data = data.read_bytes()
        elif isinstance(data, np.ndarray):
            buf = io.BytesIO()
            np.save(buf, data.astype(np.float32), allow_pickle=False)
            data, content_type = buf.getvalue(), "application/x-npy"
        query: dict[str, Any] = {}
        if deadline_ms is not None:
            query["deadline_ms"] = deadline_ms
        if explain:
            query["explain"] = "true"
        content_type = content_type or "application/octet-stream"
        return self._json("POST", "/v1/classify", body=data, content_type=content_type, query=query)

    def status(self) -> dict[str, Any]:
        return self._json("GET", "/v1/status")

    def metrics(self) -> str:
        return self._answer("GET", "/metrics").decode()

    def pin(self, config: str, seconds: float, reason: str = "maintenance") -> dict[str, Any]:
        body = orjson.dumps({"config": config, "seconds": seconds, "reason": reason})
        return self._json("POST", "/v1/pin", body=body, content_type="application/json")

    def unpin(self) -> dict[str, Any]:
        return self._json("DELETE", "/v1/pin")

    def reload(self) -> dict[str, Any]:
        return self._json("POST", "/v1/policy/reload")

    def ready(self) -> bool:
        try:
            return self.request("GET", "/v2/health/ready")[0] == 200
        except DaemonUnreachable:
            return False
