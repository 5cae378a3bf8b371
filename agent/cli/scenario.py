"""A scripted contention schedule against a running daemon: the engine behind `bench/slo.py`
and `edge-agent demo`.

Load is real: an open-loop client sends labelled test images at Poisson arrivals, and CPU
contention comes from processes burning cores. Battery and heat cannot be produced here, so
they are injected through the daemon's telemetry `file` source, the same interface the
psutil reader feeds.
"""

from __future__ import annotations

import contextlib
import io
import json
import multiprocessing
import multiprocessing.synchronize
import os
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from agent.client import Client, ClientError


def injected_telemetry_env(override: Path, interval_s: float = 0.25) -> dict[str, str]:
    """The daemon's environment for telemetry read from `override` (the `file` source: a JSON
    object merged over the psutil readings), polled every `interval_s`."""
    return {
        "EDGE_AGENT_TELEMETRY_SOURCE": "file",
        "EDGE_AGENT_TELEMETRY_FILE": str(override),
        "EDGE_AGENT_TELEMETRY_INTERVAL_S": f"{interval_s:g}",
    }


@dataclass(frozen=True)
class Phase:
    name: str
    burn: int = 0  # processes burning a core each
    telemetry: dict[str, Any] = field(default_factory=dict)  # injected over the real readings


def default_schedule() -> list[Phase]:
    return [
        Phase("idle"),
        Phase("1 core busy", burn=1),
        Phase("2 cores busy", burn=2),
        Phase("idle again"),
        Phase("battery 15%", telemetry={"battery_percent": 15, "on_ac": False}),
        Phase("85 C", telemetry={"temperature_c": 85}),
        Phase("idle at end"),
    ]


@dataclass
class Record:
    sent: float  # seconds since the run started
    latency_ms: float  # inf when refused or failed
    status: int
    config: str
    correct: bool
    phase: int


def _burn(stop: multiprocessing.synchronize.Event) -> None:
    os.nice(0)
    x = 0
    while not stop.is_set():
        for _ in range(20_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


class Burners:
    """Processes that each keep one core busy, started and stopped per phase."""

    def __init__(self) -> None:
        self._procs: list[tuple[multiprocessing.Process, multiprocessing.synchronize.Event]] = []

    def set(self, count: int) -> None:
        while len(self._procs) > count:
            proc, stop = self._procs.pop()
            stop.set()
            proc.join(5)
            if proc.is_alive():
                proc.kill()
        while len(self._procs) < count:
            stop = multiprocessing.Event()
            proc = multiprocessing.Process(target=_burn, args=(stop,), daemon=True)
            proc.start()
            self._procs.append((proc, stop))

    def close(self) -> None:
        self.set(0)


#: Camera frame sizes for `labelled_frames`.
FRAME_SIZES = {"720p": (1280, 720), "1080p": (1920, 1080), "4K": (3840, 2160)}


def labelled_pngs(count: int, seed: int = 0) -> list[tuple[bytes, str]]:
    """PNG bodies of the synthetic test split with their labels."""
    from model_zoo import data

    out = []
    for i in range(count):
        s = data.sample(seed, "test", i)
        buf = io.BytesIO()
        Image.fromarray(s.image).save(buf, format="PNG")
        out.append((buf.getvalue(), data.CLASSES[s.label]))
    return out


def labelled_frames(count: int, frame: str, seed: int = 0) -> list[tuple[bytes, str]]:
    """The same test images as camera frames: upscaled to `frame` (a FRAME_SIZES key), JPEG
    quality 90, with their labels."""
    from model_zoo import data

    out = []
    for i in range(count):
        s = data.sample(seed, "test", i)
        buf = io.BytesIO()
        Image.fromarray(s.image).resize(FRAME_SIZES[frame], Image.Resampling.BICUBIC).save(buf, "JPEG", quality=90)
        out.append((buf.getvalue(), data.CLASSES[s.label]))
    return out


def run_schedule(
    socket: Path,
    override_file: Path,
    schedule: list[Phase],
    phase_s: float,
    rate: float,
    images: list[tuple[bytes, str]],
    on_tick: Callable[[int, float, list[Record]], None] | None = None,
    seed: int = 0,
    warmup_s: float = 0.0,
    content_type: str = "image/png",
) -> list[Record]:
    """Drive the schedule; returns one record per request sent. The first `warmup_s` seconds
    send the same load unrecorded, so the first phase is the daemon's steady state, not its
    first requests (cold caches, client connections being opened)."""
    records: list[Record] = []
    lock = threading.Lock()
    local = threading.local()
    burners = Burners()
    rng = random.Random(seed)

    def client() -> Client:
        if not hasattr(local, "client"):
            local.client = Client(socket, timeout=30)
        return local.client

    def send(sent: float, body: bytes, label: str, phase: int) -> None:
        t0 = time.monotonic()
        try:
            a = client().classify(body, content_type)
            rec = Record(
                sent, (time.monotonic() - t0) * 1000, 200, f"{a['variant']}@{a['budget']:g}", a["label"] == label, phase
            )
        except ClientError as exc:
            rec = Record(sent, float("inf"), exc.status, "refused", False, phase)
        except Exception:
            rec = Record(sent, float("inf"), 0, "failed", False, phase)
        with lock:
            records.append(rec)

    def warm(body: bytes) -> None:
        with contextlib.suppress(Exception):
            client().classify(body, content_type)

    pool = ThreadPoolExecutor(max_workers=64, thread_name_prefix="load")
    try:
        warm_rng, warm_end = random.Random(seed + 1), time.monotonic() + warmup_s
        while time.monotonic() < warm_end:
            pool.submit(warm, images[warm_rng.randrange(len(images))][0])
            time.sleep(warm_rng.expovariate(rate))
        started = time.monotonic()
        next_send = 0.0
        for index, phase in enumerate(schedule):
            burners.set(phase.burn)
            override_file.write_text(json.dumps(phase.telemetry))
            phase_end = (index + 1) * phase_s
            last_tick = -1.0
            while True:
                now = time.monotonic() - started
                if now >= phase_end:
                    break
                if now >= next_send:
                    body, label = images[rng.randrange(len(images))]
                    pool.submit(send, next_send, body, label, index)
                    next_send += rng.expovariate(rate)
                    continue
                if on_tick and now - last_tick >= 0.5:
                    last_tick = now
                    with lock:
                        snapshot = list(records)
                    on_tick(index, now, snapshot)
                time.sleep(min(0.005, max(0.0, next_send - now)))
    finally:
        burners.close()
        override_file.write_text("{}")
        pool.shutdown(wait=True)
    return sorted(records, key=lambda r: r.sent)


def summarize(records: list[Record], slo_ms: float, phases: int) -> dict[str, Any]:
    """Per phase and overall: attainment (refused and failed count as misses), percentiles,
    served accuracy (of answered requests), switches."""

    def stats(rs: list[Record]) -> dict[str, Any]:
        if not rs:
            return {"requests": 0}
        lat = np.array([r.latency_ms for r in rs])
        answered = [r for r in rs if r.status == 200]
        configs = [r.config for r in answered]
        switches = count_switches(configs)
        p50, p95, p99 = (float(np.percentile(lat, q)) for q in (50, 95, 99))
        return {
            "requests": len(rs),
            "answered": len(answered),
            "refused": sum(1 for r in rs if r.status != 200),
            "attainment": float((lat <= slo_ms).mean()),
            "p50_ms": round(p50, 2),
            "p95_ms": round(p95, 2) if np.isfinite(p95) else None,
            "p99_ms": round(p99, 2) if np.isfinite(p99) else None,
            "accuracy": (sum(r.correct for r in answered) / len(answered)) if answered else None,
            "switches": switches,
            "configs": sorted(set(configs)),
        }

    return {"overall": stats(records), "phases": [stats([r for r in records if r.phase == i]) for i in range(phases)]}


def count_switches(configs: list[str], persist: int = 3) -> int:
    """Changes of configuration in answer order, counting a change only once the new one
    has answered `persist` requests in a row (requests in flight at a switch finish on the old one)."""
    switches, current, run, candidate = 0, configs[0] if configs else None, 0, None
    for c in configs:
        if c == current:
            candidate, run = None, 0
            continue
        if c == candidate:
            run += 1
        else:
            candidate, run = c, 1
        if run >= persist:
            switches, current, candidate, run = switches + 1, c, None, 0
    return switches


@dataclass(frozen=True)
class Reaction:
    """How the rolling p95 answered one step: `seconds` from the step until it was back under
    the SLO (0: it never went over; None: not back by the phase's end), and `later`, the
    stretches (start, end; seconds from the step) where it went over again afterwards. A late
    stretch is no reaction to the step, but it is a miss the reader should see."""

    seconds: float | None
    later: tuple[tuple[float, float], ...] = ()

    def __str__(self) -> str:
        """In words, for a reader who has not seen this docstring."""
        if self.seconds is None:
            head = "still over the SLO at the phase's end"
        elif self.seconds == 0:
            head = "not over the SLO right after the step"
        else:
            head = f"back under the SLO {self.seconds:g} s after the step"
        if not self.later:
            return head
        spans = ", ".join(f"{a:g}" if a == b else f"{a:g}-{b:g}" for a, b in self.later)
        return f"{head}; over it later at {spans} s into the phase"


#: Requests the rolling p95 of `reaction_times` is taken over.
REACTION_WINDOW = 20


def reaction_times(
    records: list[Record], slo_ms: float, phase_s: float, phases: int, window: int = REACTION_WINDOW
) -> list[Reaction]:
    """Per phase step, the rolling p95 over the phase's last `window` requests (refusals as
    misses), evaluated at each request. Over fewer than 20 requests a p95 is close to the
    maximum, so a stretch over the SLO ends with its last late request, not with the request
    that pushes that one out of the window. The step's own stretch is one that starts within
    the phase's first `window` requests; any later one is listed apart."""
    out = []
    for i in range(phases):
        rs = sorted((r for r in records if r.phase == i), key=lambda r: r.sent)
        start = i * phase_s
        stretches: list[tuple[int, float, float]] = []  # (index first over, first and last late send time)
        open_ = False
        for j in range(len(rs)):
            win = rs[max(0, j - window + 1) : j + 1]
            over = len(win) >= 3 and float(np.percentile([r.latency_ms for r in win], 95)) > slo_ms
            if over:
                prior = stretches[-1][2] if stretches and not open_ else -np.inf
                late = [r.sent for r in win if r.latency_ms > slo_ms and r.sent > prior] or [win[-1].sent]
                if open_:
                    k, first_late, _ = stretches[-1]
                    stretches[-1] = (k, first_late, max(late))
                else:
                    stretches.append((j, min(late), max(late)))
            open_ = over
        step = stretches[0] if stretches and stretches[0][0] < window else None
        later = stretches[1:] if step is not None else stretches
        if step is None:
            seconds: float | None = 0.0
        elif open_ and len(stretches) == 1:
            seconds = None
        else:
            seconds = round(step[2] - start, 2)
        spans = tuple((round(a - start, 2), round(b - start, 2)) for _, a, b in later)
        out.append(Reaction(seconds, spans))
    return out


def records_as_dicts(records: list[Record]) -> list[dict[str, Any]]:
    return [
        {**asdict(r), "latency_ms": None if not np.isfinite(r.latency_ms) else round(r.latency_ms, 3)} for r in records
    ]
