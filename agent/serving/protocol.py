"""What one client connection may hold, and for how long: uvicorn's httptools protocol with the
peer's credentials, a deadline for every phase of a connection and a minimum body rate.

uvicorn only times a connection between two requests (keep-alive, armed after a response), so
a client that never sends a byte, dribbles its headers (slowloris) or stalls mid-body would
hold its connection, and with it a descriptor and a request slot, forever. Here a connection
is always in one phase, and each phase but the last has its own deadline:

    idle     nothing under way: new, or between requests     closed after idle_s
    headers  a request has begun, its headers are not all in  408, closed, header_s from its first byte
    body     the request is being handled, its body is not in 408, closed, body_s from its start, or
                                                               sooner when it arrives under min_rate
    -        the request is in and the app works on it         the runner's own admission and deadlines

The body's deadline follows its bytes, as Apache's mod_reqtimeout does: `body_grace_s` from its
start plus one second for every `body_min_rate` bytes received, never past `body_s`. A client
that sends a body at 1 byte/s holds its connection for the grace, not for `body_s`; a body sent
at any rate above the minimum is never cut before `body_s`.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import structlog
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from agent.serving.envelope import error_body

log = structlog.get_logger(__name__)

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class ConnectionLimits:
    """The deadline of each phase (module docstring), and what to call when one passes."""

    idle_s: float
    header_s: float
    body_s: float
    max_header_bytes: int = 64 * 1024
    body_grace_s: float = 2.0  # a body's first deadline; each body_min_rate bytes received add a second
    body_min_rate: int = 0  # bytes/s; 0: only body_s applies
    on_timeout: Callable[[str], None] = lambda phase: None  # e.g. a Prometheus counter by phase


class AgentProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol, plus the peer's uid from SO_PEERCRED in `scope["state"]` and
    the phase deadlines of the module docstring. uvicorn builds protocols itself, so the limits
    come from the class that `protocol_class` makes."""

    limits: ClassVar[ConnectionLimits]

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._timer: asyncio.TimerHandle | None = None
        self._phase: str | None = None
        self._header_bytes = 0
        self._body_started = 0.0
        self._body_bytes = self._body_bytes_armed = 0
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family == socket.AF_UNIX:
            pid, uid, gid = _PEERCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size))
            self.app_state = {**self.app_state, "peer_uid": uid, "peer_pid": pid, "peer_gid": gid}
        self._arm("idle", self.limits.idle_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    # -- phase changes, from the parser and the response ------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._phase in ("idle", "headers"):
            # httptools keeps every header it is given: without a bound, one request's headers
            # could fill the memory before the header deadline ends it. Counted from a request's
            # first byte (it arrives while the connection is idle: 250 KiB of headers in one send
            # must not pass), up to the blank line that ends them (a body in the same send is not
            # header bytes).
            end = data.find(b"\r\n\r\n")
            self._header_bytes += len(data) if end < 0 else end + 4
            if self._header_bytes > self.limits.max_header_bytes:
                self._disarm()
                log.info(
                    "headers_too_large", limit=self.limits.max_header_bytes, peer_pid=self.app_state.get("peer_pid")
                )
                self._send_error(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"request headers exceed {self.limits.max_header_bytes} bytes",
                )
                self.transport.close()
                return
        super().data_received(data)

    def send_400_response(self, msg: str) -> None:
        """Bytes that are not HTTP get the same JSON error as any other bad request (uvicorn's
        own answer is plain text); `invalid_http` tells it from a request the app refused."""
        self._disarm()
        self._send_error(400, "Bad Request", "invalid_http", f"{msg} The connection is closed.")
        self.transport.close()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._arm("headers", self.limits.header_s)

    def on_headers_complete(self) -> None:
        self._header_bytes = 0  # the next request counts from its own first byte
        self._disarm()
        super().on_headers_complete()
        started = self.cycle is not None and self.cycle.scope is self.scope and not self.pipeline
        if started:  # a pipelined request is timed when it starts (its reading is paused till then)
            self._arm_body(self.cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        if self._phase == "body":
            self._disarm()
        if self.cycle is not None and self.cycle.response_complete:  # answered before its body was read
            self._arm("idle", self.limits.idle_s)

    def on_response_complete(self) -> None:
        waiting = self.pipeline[-1][0] if self.pipeline else None
        super().on_response_complete()
        self._unset_keepalive_if_required()  # the idle phase replaces uvicorn's keep-alive timer
        if waiting is not None and not any(cycle is waiting for cycle, _ in self.pipeline):
            if waiting.more_body:  # the pipelined request just started; its body is still to come
                self._arm_body(waiting)
        elif self._phase is None and self.cycle.response_complete:
            self._arm("idle", self.limits.idle_s)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        super().on_body(body)

    # -- deadlines ----------------------------------------------------------------------------------

    def _arm_body(self, cycle: RequestResponseCycle) -> None:
        self._body_started, self._body_bytes, self._body_bytes_armed = self.loop.time(), 0, 0
        self._arm("body", self._body_allowed_s(), cycle)

    def _body_allowed_s(self) -> float:
        """Seconds the body may take from its start, given the bytes received so far."""
        limits = self.limits
        if not limits.body_min_rate:
            return limits.body_s
        return min(limits.body_s, limits.body_grace_s + self._body_bytes / limits.body_min_rate)

    def _arm(self, phase: str, seconds: float, cycle: RequestResponseCycle | None = None) -> None:
        self._disarm()
        if not self.transport.is_closing():
            self._phase = phase
            self._timer = self.loop.call_later(seconds, self._expired, phase, seconds, cycle)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._phase = None, None

    def _expired(self, phase: str, seconds: float, cycle: RequestResponseCycle | None) -> None:
        self._timer, self._phase = None, None
        if self.transport.is_closing():
            return
        reason = f"within {seconds:g} s"
        if phase == "body":
            elapsed = self.loop.time() - self._body_started
            allowed = self._body_allowed_s()
            if self._body_bytes > self._body_bytes_armed and allowed - elapsed > 0.001:
                self._arm("body", allowed - elapsed, cycle)  # bytes came meanwhile: the deadline moved on
                self._body_bytes_armed = self._body_bytes
                return
            seconds = round(elapsed, 3)
            if allowed < self.limits.body_s:
                phase = "body_rate"
                reason = (
                    f"at the minimum rate: {self._body_bytes} bytes in {elapsed:.1f} s, under "
                    f"{self.limits.body_min_rate} bytes/s after the first {self.limits.body_grace_s:g} s"
                )
            else:
                reason = f"within {self.limits.body_s:g} s"
        if phase == "idle" and self.cycle is not None:
            phase = "keepalive"  # a normal end for a client's pooled connection, not a fault
        answering = self.cycle is not None and not self.cycle.response_complete  # no 408 amid another answer
        if phase == "headers" and not answering:
            self._send_error(
                408, "Request Timeout", "request_timeout", f"request headers not received within {seconds:g} s"
            )
        elif phase in ("body", "body_rate") and cycle is not None:
            if not cycle.response_started:
                self._send_error(
                    408,
                    "Request Timeout",
                    "request_timeout",
                    f"request body not received {reason}",
                    cycle.scope.get("path", ""),
                )
            cycle.disconnected = True  # the app's receive() answers http.disconnect; its sends are dropped
            cycle.message_event.set()
        emit = log.debug if phase == "keepalive" else log.info
        emit("connection_timeout", phase=phase, limit_s=seconds, peer_pid=self.app_state.get("peer_pid"))
        self.limits.on_timeout(phase)
        self.transport.close()

    def _send_error(self, status: int, reason: str, code: str, message: str, path: str = "") -> None:
        """A JSON error written straight to the transport: the request never reached the app.
        `path`, once the request line is parsed, picks the route's error body."""
        body = error_body(code, message, path)
        head = [f"HTTP/1.1 {status} {reason}\r\n".encode()]
        head += [name + b": " + value + b"\r\n" for name, value in self.server_state.default_headers]
        head += [
            b"content-type: application/json\r\n",
            b"content-length: " + str(len(body)).encode() + b"\r\n",
            b"connection: close\r\n\r\n",
        ]
        self.transport.write(b"".join(head) + body)


def protocol_class(limits: ConnectionLimits) -> type[AgentProtocol]:
    """`AgentProtocol` bound to `limits` (uvicorn takes a class and calls it per connection)."""

    class Bound(AgentProtocol):
        pass

    Bound.limits = limits
    return Bound
