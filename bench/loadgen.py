"""Load for the overload and soak benchmarks: a cheap asyncio HTTP/1.1 client over the Unix
socket, closed-loop capacity, open-loop Poisson arrivals, and readings of the daemon process.

The client, the daemon and its two ORT workers share two cores, so every request is encoded
once up front (h11) and sent with one write on a kept-alive connection, and answers are
parsed by httptools (C): httpx's async client spent over ten times more CPU per request
here, CPU the daemon being measured would lose.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import httptools
import numpy as np
import orjson
import psutil
from PIL import Image

from agent.client import Client
from agent.zoo.preprocess import image_to_input
from model_zoo import data

CLASSIFY = "/v1/classify"


@dataclass(frozen=True)
class Answer:
    status: int  # 0: no HTTP answer (transport error, or the client had no connection left)
    retry_after: bool
    error: str | None = None
    service_ms: float | None = None  # the daemon's own queue + compute time (what the SLO counts)
    queued: bool = False  # a 503 given after waiting in the queue, not at admission


@dataclass(frozen=True)
class Shot:
    """One request of an open-loop run. Latency is from the moment it was written, so a late
    client shows up in `lag_ms` instead of inflating the daemon's latency."""

    sent_s: float  # scheduled send time, seconds since the run's origin
    lag_ms: float  # how late the client actually sent it
    status: int
    latency_ms: float
    retry_after: bool
    phase: str
    error: str | None = None
    service_ms: float | None = None  # the daemon's queue + compute time, for answered requests
    queued: bool = False  # a 503 given after waiting in the queue, not at admission


def encode_post(path: str, body: bytes, content_type: str) -> bytes:
    """A whole HTTP/1.1 POST, ready to write on a kept-alive connection."""
    conn = h11.Connection(our_role=h11.CLIENT)
    headers = [("Host", "edge-agent"), ("Content-Type", content_type), ("Content-Length", str(len(body)))]
    return b"".join(
        conn.send(event) or b""
        for event in (h11.Request(method="POST", target=path, headers=headers), h11.Data(data=body), h11.EndOfMessage())
    )


def sample_requests(count: int, kinds: Sequence[str] = ("png",), path: str = CLASSIFY) -> list[bytes]:
    """Classify requests for test images of the shipped data generator, as PNG and/or .npy bodies."""
    out = []
    for i in range(count):
        image = data.sample(0, "test", i).image
        for kind in kinds:
            buf = io.BytesIO()
            if kind == "png":
                Image.fromarray(image).save(buf, format="PNG")
                out.append(encode_post(path, buf.getvalue(), "image/png"))
            else:
                np.save(buf, image_to_input(image, image.shape[0])[0], allow_pickle=False)
                out.append(encode_post(path, buf.getvalue(), "application/x-npy"))
    return out


class _Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.used = reader, writer, time.monotonic()

    def close(self) -> None:
        self.writer.close()


class UnixHttp:
    """A pool of kept-alive HTTP/1.1 connections to a Unix socket. Idle connections are
    dropped before the daemon's 5 s keep-alive would close them under a request in flight."""

    def __init__(self, socket: Path, max_connections: int = 200, idle_s: float = 3.0, timeout_s: float = 30.0) -> None:
        self.socket, self.max_connections, self.idle_s, self.timeout_s = str(socket), max_connections, idle_s, timeout_s
        self._idle: list[_Connection] = []
        self.open = 0

    async def _acquire(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.used < self.idle_s:
                return conn
            self._discard(conn)
        if self.open >= self.max_connections:
            return None
        self.open += 1
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket)
        except OSError:
            self.open -= 1
            raise
        return _Connection(reader, writer)

    def _discard(self, conn: _Connection) -> None:
        conn.close()
        self.open -= 1

    async def send(self, request: bytes) -> Answer:
        """Write one encoded request and read its answer; never raises for transport trouble."""
        try:
            conn = await self._acquire()
        except OSError as exc:
            return Answer(0, False, f"connect: {type(exc).__name__}")
        if conn is None:
            return Answer(0, False, "client out of connections")
        try:
            async with asyncio.timeout(self.timeout_s):
                conn.writer.write(request)
                answer, keep = await _read_answer(conn.reader)
        except (OSError, TimeoutError, asyncio.IncompleteReadError, httptools.HttpParserError, ValueError) as exc:
            self._discard(conn)
            return Answer(0, False, type(exc).__name__)
        if keep:
            conn.used = time.monotonic()
            self._idle.append(conn)
        else:
            self._discard(conn)
        return answer

    def close(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())


class _AnswerParser:
    """httptools callbacks for one answer: status, the headers the benchmarks read, the body."""

    def __init__(self) -> None:
        self.retry_after = False
        self.body: list[bytes] = []
        self.complete = False

    def on_header(self, name: bytes, value: bytes) -> None:
        if name.lower() == b"retry-after":
            self.retry_after = True

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.complete = True


async def _read_answer(reader: asyncio.StreamReader) -> tuple[Answer, bool]:
    """(answer, whether the connection may be reused)."""
    callbacks = _AnswerParser()
    parser = httptools.HttpResponseParser(callbacks)
    while not callbacks.complete:
        chunk = await reader.read(65536)
        if not chunk:
            raise asyncio.IncompleteReadError(b"", None)
        parser.feed_data(chunk)
    status = parser.get_status_code()
    service_ms, queued = None, False
    if status == 200:
        answer = orjson.loads(b"".join(callbacks.body))
        if "queue_ms" in answer:
            service_ms = answer["queue_ms"] + answer["compute_ms"]
    elif status == 503:
        queued = b"while queued" in b"".join(callbacks.body)  # the runner's words for a late refusal
    return Answer(status, callbacks.retry_after, service_ms=service_ms, queued=queued), parser.should_keep_alive()


async def closed_loop(http: UnixHttp, requests: Sequence[bytes], clients: int, seconds: float) -> float:
    """Answered (200) requests per second of `clients` senders sending back to back."""
    started = time.monotonic()
    end, ok = started + seconds, 0

    async def sender(k: int) -> None:
        nonlocal ok
        while time.monotonic() < end:
            answer = await http.send(requests[k % len(requests)])
            ok += answer.status == 200
            k += clients

    await asyncio.gather(*(sender(k) for k in range(clients)))
    return ok / (time.monotonic() - started)


async def pinned_capacity(
    sock: Path, http: UnixHttp, requests: Sequence[bytes], seconds: float, pin: str, reason: str
) -> tuple[dict[str, Any], float]:
    """(/v1/status, answered req/s with one back-to-back client per worker) with `pin` in force;
    the pin is left in place. Pinned, capacity is one number, not whatever the controller picks."""
    with Client(sock) as admin:
        admin.pin(pin, 86400, reason)
        status = admin.status()
    workers = status["queue"]["workers"]
    await closed_loop(http, requests, workers, 1.0)  # warm connections and caches
    capacity = await closed_loop(http, requests, workers, seconds)
    if capacity <= 0:
        raise RuntimeError("no request was answered while measuring capacity")
    return status, capacity


async def open_loop(
    http: UnixHttp,
    requests: Sequence[bytes],
    schedule: Sequence[tuple[str, float, float]],
    origin: float,
    rng: random.Random,
) -> list[Shot]:
    """Poisson arrivals through the (phase, rate per second, seconds) steps of `schedule`, one
    step straight after the other and whatever the answers: an overloaded daemon cannot slow
    the sender down (no coordinated omission), and a step starts with the queue the last left."""
    shots: list[Shot] = []
    tasks: set[asyncio.Task[None]] = set()

    async def fire(request: bytes, scheduled: float, phase: str) -> None:
        began = time.monotonic()
        answer = await http.send(request)
        latency = (time.monotonic() - began) * 1000
        shots.append(
            Shot(
                scheduled - origin,
                (began - scheduled) * 1000,
                answer.status,
                latency,
                answer.retry_after,
                phase,
                answer.error,
                answer.service_ms,
                answer.queued,
            )
        )

    at = time.monotonic()
    for phase, rate, seconds in schedule:
        end = at + seconds
        at += rng.expovariate(rate)
        while at < end:
            delay = at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.create_task(fire(rng.choice(requests), at, phase))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            at += rng.expovariate(rate)
        at = end
    await asyncio.gather(*tasks)
    return sorted(shots, key=lambda s: s.sent_s)


async def every(
    interval_s: float, stop: asyncio.Event, job: Callable[[], Awaitable[None]], first_s: float = 0.0
) -> None:
    """Run `job` every `interval_s` seconds (on a fixed grid, not drifting), the first time after
    `first_s`, until `stop` is set."""
    next_at = time.monotonic() + first_s
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - time.monotonic()))
        if stop.is_set():
            return
        await job()
        next_at += interval_s


def rss_mb(proc: psutil.Process) -> float:
    return round(proc.memory_info().rss / 2**20, 2)


def open_fds(pid: int) -> tuple[int, int]:
    """(all open file descriptors, of which sockets) of a process, from /proc/PID/fd."""
    total = sockets = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(fd_dir / name)
        except FileNotFoundError:  # closed between listing and reading
            continue
        total += 1
        sockets += target.startswith("socket:")
    return total, sockets


def percentiles(values: Sequence[float], qs: Sequence[float] = (50, 95, 99)) -> dict[str, float | None]:
    """{"p50": ..., "max": ...} in ms, rounded; None for an empty sample."""
    if not values:
        return {**{f"p{q:g}": None for q in qs}, "max": None}
    arr = np.asarray(values, dtype=np.float64)
    out: dict[str, float | None] = {f"p{q:g}": round(float(np.percentile(arr, q)), 3) for q in qs}
    out["max"] = round(float(arr.max()), 3)
    return out


def failure_kinds(shots: Sequence[Shot], expected: Sequence[int] = (200, 503)) -> dict[str, int]:
    """How many requests ended otherwise than `expected`, by error (or HTTP status)."""
    kinds: dict[str, int] = {}
    for s in shots:
        if s.status not in expected:
            key = s.error or str(s.status)
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "MISS"
