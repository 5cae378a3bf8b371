"""Hostile local clients, as probes against a real daemon's Unix socket (issue 20), shared by
tests/test_hostile.py and bench/hostile.py: connections that hold inference bodies open or send
them at 1 byte/s, v2 bodies of nested arrays, image bombs, and the probes that time what the
other clients see meanwhile. Plain sockets, so the probes' own cost is a connect and a send."""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Event
from pathlib import Path

import numpy as np
from PIL import Image

BOMB_SIDE = 6324  # 40 M pixels: just under the daemon's MAX_PIXELS
HELD_PATH = "/v2/models/full/infer"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    ms: float


def request(
    sock_path: Path,
    method: str,
    path: str,
    body: bytes = b"",
    headers: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> Answer:
    """One request on a fresh connection; its status, body and time from connect to the last byte."""
    head = [f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", f"Content-Length: {len(body)}"]
    head += [f"{k}: {v}" for k, v in (headers or {}).items()]
    started = time.perf_counter()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock_path))
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        chunks = []
        while chunk := conn.recv(1 << 16):
            chunks.append(chunk)
    raw = b"".join(chunks)
    ms = (time.perf_counter() - started) * 1000
    top, _, payload = raw.partition(b"\r\n\r\n")
    status = int(top.split(b" ", 2)[1]) if top.startswith(b"HTTP/1.1 ") else 0
    return Answer(status, payload, ms)


# -- connections that hold bodies ---------------------------------------------------------------
# The load runs in a child process of its own: in the probing process, its Python work would
# hold the GIL and show up as latency of the daemon.


def _hold(sock_path: Path, count: int, rate: int, stop: Event, report: Queue[tuple[int, dict[int, int]]]) -> None:
    """`count` connections that each declare a 1000-byte inference body and then send none
    (`rate` 0) or one byte a second (`rate` 1); each one the daemon closes is reopened, until
    `stop`. Reports (connections opened, the statuses the daemon answered them)."""
    sel = selectors.DefaultSelector()
    opened = 0
    answers: dict[int, int] = {}
    head = (
        f"POST {HELD_PATH} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    ).encode()

    def open_one() -> None:
        nonlocal opened
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(str(sock_path))
        conn.sendall(head)
        conn.setblocking(False)
        sel.register(conn, selectors.EVENT_READ)
        opened += 1

    for _ in range(count):
        open_one()
    next_byte = time.monotonic() + 1.0
    while not stop.is_set():
        for key, _ in sel.select(0.05):
            conn = key.fileobj
            assert isinstance(conn, socket.socket)
            try:
                data = conn.recv(4096)
            except OSError:
                data = b""
            if data.startswith(b"HTTP/1.1 "):
                status = int(data.split(b" ", 2)[1])
                answers[status] = answers.get(status, 0) + 1
            sel.unregister(conn)
            conn.close()
            if not stop.is_set():
                open_one()
        if rate and time.monotonic() >= next_byte:
            next_byte += 1.0
            for key in list(sel.get_map().values()):
                with contextlib.suppress(OSError):  # closed by the daemon: reopened once its EOF is read
                    key.fileobj.send(b" ")  # type: ignore[union-attr]
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    report.put((opened, answers))


@dataclass
class Load:
    """What a load process reported when it stopped."""

    opened: int = 0
    answers: dict[int, int] = field(default_factory=dict)


@contextmanager
def in_child(target: Callable[..., None], *args: object) -> Iterator[Load]:
    """Run `target(*args, stop, report)` in a child process until the block ends; the Load it
    yields is filled with its report then."""
    context = multiprocessing.get_context("spawn")
    stop, report = context.Event(), context.Queue()
    child = context.Process(target=target, args=(*args, stop, report), daemon=True)
    child.start()
    load = Load()
    try:
        yield load
    finally:
        stop.set()
        load.opened, load.answers = report.get(timeout=120)
        child.join(30)


@contextmanager
def holding(sock_path: Path, count: int, rate: int = 0) -> Iterator[Load]:
    """`count` connections holding inference bodies (see `_hold`), from a child process; waits
    until they are all open."""
    with in_child(_hold, sock_path, count, rate) as load:
        time.sleep(1.0 + count / 1000)
        yield load


@dataclass
class Round:
    """One round of probes from a client that is not among the holders."""

    status: Answer
    ready: Answer
    pin: Answer
    classify: Answer


def probe_round(sock_path: Path, png: bytes) -> Round:
    """GET /v1/status, GET /v2/health/ready, an admin pin (root: the tests run as root) and a
    classify, one after another."""
    pin = json.dumps({"config": "full@1", "seconds": 60, "reason": "hostile probe"}).encode()
    return Round(
        status=request(sock_path, "GET", "/v1/status"),
        ready=request(sock_path, "GET", "/v2/health/ready"),
        pin=request(sock_path, "POST", "/v1/pin", pin, {"Content-Type": "application/json"}),
        classify=request(sock_path, "POST", "/v1/classify", png, {"Content-Type": "image/png"}),
    )


def probe_rounds(sock_path: Path, png: bytes, seconds: float, every_s: float = 0.5) -> list[Round]:
    rounds: list[Round] = []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        rounds.append(probe_round(sock_path, png))
        time.sleep(every_s)
    return rounds


# -- v2 bodies of nested arrays -----------------------------------------------------------------


def nested_v2_body(target_bytes: int = 7_000_000) -> bytes:
    """A v2 request of about `target_bytes` whose data is a UINT8 frame as nested arrays, one
    per pixel: some 170 k arrays in 7 MB (numbers written long, as a careless client might)."""
    pixel = "[200.00000001,100.00000001,50.000000001]"
    pixels = target_bytes // (len(pixel) + 1)
    width = 425
    height = pixels // width
    row = "[" + ",".join([pixel] * width) + "]"
    data = "[" + ",".join([row] * height) + "]"
    head = {"name": "image", "datatype": "UINT8", "shape": [height, width, 3]}
    return ('{"inputs":[' + json.dumps(head)[:-1] + ',"data":' + data + "}]}").encode()


def _send(sock_path: Path, body: bytes, senders: int, stop: Event, report: Queue[tuple[int, dict[int, int]]]) -> None:
    """`senders` clients that each post `body` to the v2 infer route back to back until `stop`."""
    answers: dict[int, int] = {}
    sent = 0

    def send() -> None:
        nonlocal sent
        while not stop.is_set():
            status = request(sock_path, "POST", HELD_PATH, body, {"Content-Type": "application/json"}, 120).status
            answers[status] = answers.get(status, 0) + 1
            sent += 1

    threads = [threading.Thread(target=send) for _ in range(senders)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    report.put((sent, answers))


def live_latencies(sock_path: Path, body: bytes, senders: int, seconds: float) -> tuple[list[float], Load]:
    """GET /v2/health/live every 10 ms for `seconds` while `senders` clients (in a child
    process) each post `body` to the v2 infer route back to back: (its latencies in ms, the
    requests the senders made and the statuses they got)."""
    with in_child(_send, sock_path, body, senders) as load:
        time.sleep(1.0)  # the bodies are in flight
        latencies = []
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            latencies.append(request(sock_path, "GET", "/v2/health/live").ms)
            time.sleep(0.01)
    return latencies, load


# -- image bombs --------------------------------------------------------------------------------


def image_bombs(side: int = BOMB_SIDE) -> dict[str, tuple[str, bytes]]:
    """Small files that decode to side x side RGBA (160 MB at 6324): name -> (type, bytes)."""
    image = Image.new("RGBA", (side, side), (10, 200, 30, 128))
    bombs = {}
    for name, fmt, kind, options in (
        ("png", "PNG", "image/png", {"optimize": True}),
        ("tiff", "TIFF", "image/tiff", {"compression": "tiff_adobe_deflate"}),
        ("webp", "WEBP", "image/webp", {"lossless": True, "method": 0, "quality": 0}),
    ):
        buf = io.BytesIO()
        image.save(buf, format=fmt, **options)
        bombs[name] = (kind, buf.getvalue())
    return bombs


def truncated_jpeg(side: int = 6000) -> bytes:
    """A 16x16 JPEG whose frame header is patched to declare side x side: some 630 bytes."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buf, format="JPEG", quality=50)
    data = bytearray(buf.getvalue())
    sof = data.find(b"\xff\xc0")
    struct.pack_into(">HH", data, sof + 5, side, side)
    return bytes(data)


def rss_kib(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def peak_rss_growth_mib(pid: int, work: Callable[[], object]) -> tuple[float, object]:
    """How far the daemon's RSS rose above where it stood while `work` ran, in MiB: its peak
    (VmHWM, reset first through clear_refs, which needs root or the same uid) less its RSS before."""
    before = rss_kib(pid)
    Path(f"/proc/{pid}/clear_refs").write_text("5")  # the peak restarts from the current RSS
    result = work()
    return (rss_kib(pid, "VmHWM") - before) / 1024, result


def concurrently(calls: Sequence[Callable[[], Answer]]) -> list[Answer]:
    answers: list[Answer | None] = [None] * len(calls)

    def one(i: int) -> None:
        answers[i] = calls[i]()

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return [a for a in answers if a is not None]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")
