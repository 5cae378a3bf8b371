"""Overload: what the daemon does when offered more than it can serve, and right after.

Starts the real daemon (temp socket, shipped zoo, default policy) pinned to `full@1`: with the
controller free, overload would make it step down to a cheaper configuration, capacity would
change under the load and "3x capacity" would mean nothing; pinned, capacity is one fixed
number and the run measures admission alone. Capacity is the closed-loop throughput of as
many back-to-back clients as the daemon has workers. Then open-loop Poisson arrivals: half
capacity for `--before` s (what "normal" looks like here), `--factor` x capacity for
`--duration` s, and half capacity again for `--after` s, starting while the queue is still
full. The backlog then drains at the spare half of capacity; requests sent once it has
drained show whether the daemon serves normally again.

Every request carries `deadline_ms` = the SLO by default, as a camera client does (a frame is
worth nothing after the next one): the daemon refuses at once what it predicts it cannot
answer in time, so admitted requests keep their latency. `--no-deadline` sends plain requests
instead: then only the queue bound (workers + queue_size) limits what is admitted, and
admitted latency shows what waiting through that whole queue costs against the SLO.

Targets: 503 refusals answered within 5 ms (p95), all with Retry-After; admitted requests in
flight never above the bound; admitted latency at the SLO's percentile within the SLO (the
SLO the daemon reports in /v1/status); after the drop, the backlog gone within bound / spare
capacity (+ one sampling period), and from then on that percentile within the SLO and every
request answered. Requests sent before the backlog drained wait behind it or are refused, as
they should; the "after" row counts them but no target holds them against the daemon. The
percentile before the overload stands beside the one after, to tell an after-effect from
what `full@1` does at half capacity anyway. The client shares the daemon's two cores;
`--client-priority N` runs it N nice levels above the daemon's workers (as the daemon's own
event loop runs), to tell the daemon's answer from the client's own wait for a core. Writes bench/results/overload.{json,md,png}
(`--quick`: overload-quick.*).

    python -m bench.overload [--duration 60] [--factor 3] [--before 10] [--after 12] [--no-deadline] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop

from agent.cli.launch import running_daemon
from agent.client import Client
from agent.serving.priority import BASE_NICE, set_thread_nice
from bench.common import RESULTS, header, md_table, write_results
from bench.loadgen import (
    CLASSIFY,
    Shot,
    UnixHttp,
    every,
    failure_kinds,
    open_loop,
    percentiles,
    pinned_capacity,
    rss_mb,
    sample_requests,
    verdict,
)

PIN = "full@1"
REFUSAL_MS = 5.0
SAMPLE_S = 0.5


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the open-loop run started
    inflight: int
    rss_mb: float


@dataclass
class Run:
    status: dict[str, Any]  # /v1/status before the load
    capacity_rps: float
    shots: list[Shot]
    samples: list[Sample]
    client_cpu: float  # CPU seconds of this process per second of open-loop run


async def drive(pid: int, sock: Path, args: argparse.Namespace) -> Run:
    """Pin, measure capacity, then overload and recovery with queue and RSS sampled throughout."""
    if args.client_priority:  # after the daemon started, which would inherit it
        set_thread_nice(BASE_NICE - args.client_priority)
    plain = sample_requests(32, ("png",))
    http = UnixHttp(sock)
    status, capacity = await pinned_capacity(
        sock, http, plain, args.capacity_s, PIN, "overload bench: one fixed capacity"
    )
    deadline = f"{CLASSIFY}?deadline_ms={status['slo']['latency_ms']:g}"
    requests = sample_requests(32, ("png",), deadline) if args.deadline else plain
    daemon, samples, stop = psutil.Process(pid), [], asyncio.Event()
    origin = time.monotonic()
    with Client(sock) as watcher:

        async def sample() -> None:
            queue = (await asyncio.to_thread(watcher.status))["queue"]
            samples.append(Sample(round(time.monotonic() - origin, 3), queue["inflight"], rss_mb(daemon)))

        sampler = asyncio.create_task(every(SAMPLE_S, stop, sample))
        cpu = time.process_time()
        half = 0.5 * capacity
        schedule = [
            ("before", half, args.before),
            ("overload", args.factor * capacity, args.duration),
            ("after", half, args.after),
        ]
        shots = await open_loop(http, requests, schedule, origin, random.Random(args.seed))
        client_cpu = (time.process_time() - cpu) / (time.monotonic() - origin)
        stop.set()
        await sampler
    http.close()
    return Run(status, capacity, shots, samples, client_cpu)


def phase_figures(shots: list[Shot], seconds: float, percentile: float) -> dict[str, Any]:
    """Counts, rates and latencies of one phase: answered (200), refused (503), anything else."""
    ok = [s.latency_ms for s in shots if s.status == 200]
    refused = [s for s in shots if s.status == 503]
    other = failure_kinds(shots)
    return {
        "seconds": seconds,
        "sent": len(shots),
        "sent_rps": round(len(shots) / seconds, 1) if seconds else None,
        "answered": len(ok),
        "goodput_rps": round(len(ok) / seconds, 1) if seconds else None,
        "refused": len(refused),
        "other": sum(other.values()),
        "other_kinds": other,
        "success_rate": round(len(ok) / len(shots), 4) if shots else None,
        "retry_after_share": round(sum(s.retry_after for s in refused) / len(refused), 4) if refused else None,
        "answered_ms": percentiles(ok, sorted({50, 95, 99, percentile})),
        "daemon_ms": percentiles(
            [s.service_ms for s in shots if s.service_ms is not None], sorted({50, 95, percentile})
        ),
        "refused_ms": percentiles([s.latency_ms for s in refused], (50, 95)),
        "refused_at_admission_ms": percentiles([s.latency_ms for s in refused if not s.queued], (50, 95)),
        "refused_after_queueing": sum(s.queued for s in refused),
        "refused_after_queueing_ms": percentiles([s.latency_ms for s in refused if s.queued], (50, 95)),
        "client_lag_ms": percentiles([s.lag_ms for s in shots], (50, 99)),
    }


def drain_s(samples: list[Sample], drop_at: float, workers: int) -> float | None:
    """Seconds from the drop in load until the sampled queue is empty (in flight <= workers)."""
    after = [s.t - drop_at for s in samples if s.t >= drop_at and s.inflight <= workers]
    return round(after[0], 2) if after else None


def figures(run: Run, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the report shows, from the requests and samples of one run."""
    slo, queue = run.status["slo"], run.status["queue"]
    pct, slo_ms, workers = float(slo["percentile"]), float(slo["latency_ms"]), queue["workers"]
    seconds = {"before": args.before, "overload": args.duration, "after": args.after}
    phases = {name: phase_figures([s for s in run.shots if s.phase == name], t, pct) for name, t in seconds.items()}
    drop_at = args.before + args.duration
    drained = drain_s(run.samples, drop_at, workers)
    settled = [s for s in run.shots if s.phase == "after" and drained is not None and s.sent_s >= drop_at + drained]
    spare = run.capacity_rps - phases["after"]["sent_rps"] if args.after else None
    rss = [s.rss_mb for s in run.samples]
    return {
        "pin": PIN,
        "deadline_ms": slo_ms if args.deadline else None,
        "slo": {"percentile": pct, "latency_ms": slo_ms, "policy": run.status["policy"]["path"]},
        "workers": workers,
        "ort_threads": queue["ort_threads"],
        "bound": queue["capacity"],
        "capacity_rps": round(run.capacity_rps, 1),
        "factor": args.factor,
        "client_cpu_share_of_a_core": round(run.client_cpu, 3),
        "client_priority": args.client_priority,
        "loop_priority": run.status["queue"].get("loop_priority"),
        "phases": phases,
        "settled": {**phase_figures(settled, args.after - (drained or 0), pct), "from_s": drained},
        "queue": {
            "max_inflight": max((s.inflight for s in run.samples), default=None),
            "sample_s": SAMPLE_S,
            "drain_s": drained,
            "drain_expected_s": round(queue["capacity"] / spare, 2) if spare and spare > 0 else None,
        },
        "rss_mb": {"start": rss[0] if rss else None, "end": rss[-1] if rss else None, "max": max(rss, default=None)},
        "timeline": [{"t": s.t, "inflight": s.inflight, "rss_mb": s.rss_mb} for s in run.samples],
    }


def _within(value: float | None, limit: float | None) -> bool | None:
    return None if value is None or limit is None else value <= limit


def targets(f: dict[str, Any], alive: bool) -> list[list[str]]:
    """[what, measured, target, PASS/MISS] for each target of the issue."""
    pct, slo_ms = f["slo"]["percentile"], f["slo"]["latency_ms"]
    key = f"p{pct:g}"
    over, settled, queue = f["phases"]["overload"], f["settled"], f["queue"]
    refused, share, peak = over["refused_ms"], over["retry_after_share"], queue["max_inflight"]
    before = f["phases"]["before"]
    admitted, normal = over["answered_ms"][key], before["answered_ms"][key]
    drain_limit = None if queue["drain_expected_s"] is None else queue["drain_expected_s"] + queue["sample_s"]
    return [
        [
            "503 answer time p95",
            f"{refused['p95']} ms (p50 {refused['p50']}, max {refused['max']}; at admission p95 "
            f"{over['refused_at_admission_ms']['p95']} ms, after queueing {over['refused_after_queueing']} "
            f"with p95 {over['refused_after_queueing_ms']['p95']} ms)",
            f"<= {REFUSAL_MS:g} ms",
            verdict(_within(refused["p95"], REFUSAL_MS)),
        ],
        [
            "503 with Retry-After",
            f"{share:.1%} of {over['refused']}" if share is not None else "no 503",
            "100%",
            verdict(None if share is None else share == 1.0),
        ],
        [
            "admitted in flight, max sampled",
            f"{peak}",
            f"<= {f['bound']} (workers + queue_size)",
            verdict(_within(peak, f["bound"])),
        ],
        [
            f"admitted {key} under overload, in the daemon (queue + compute: what the SLO counts)",
            f"{over['daemon_ms'][key]} ms (at the client, with HTTP: {admitted} ms)",
            f"<= {slo_ms:g} ms (SLO)",
            verdict(_within(over["daemon_ms"][key], slo_ms)),
        ],
        [
            "backlog drained after the drop",
            f"{queue['drain_s']} s",
            f"<= {drain_limit:.2f} s (bound / spare capacity + {queue['sample_s']:g} s)" if drain_limit else "-",
            verdict(_within(queue["drain_s"], drain_limit)),
        ],
        [
            f"{key} once drained, in the daemon",
            f"{settled['daemon_ms'][key]} ms (at the client: {settled['answered_ms'][key]} ms; "
            f"before the overload: {before['daemon_ms'][key]} / {normal} ms)",
            f"<= {slo_ms:g} ms (SLO)",
            verdict(_within(settled["daemon_ms"][key], slo_ms)),
        ],
        [
            "answered once drained, vs before the overload",
            f"{settled['success_rate']:.1%} of {settled['sent']} (before: {before['success_rate']:.1%})"
            if settled["sent"]
            else "none",
            "no lower than before - 2 points",
            verdict(None if not settled["sent"] else settled["success_rate"] >= before["success_rate"] - 0.02),
        ],
        ["daemon running at the end", "yes" if alive else "no", "yes", verdict(alive)],
    ]


COLUMNS: dict[str, tuple[str, ...]] = {
    "sent": ("sent",),
    "req/s": ("sent_rps",),
    "200": ("answered",),
    "503": ("refused",),
    "other": ("other",),
    "200 p50": ("answered_ms", "p50"),
    "200 p95": ("answered_ms", "p95"),
    "200 p99": ("answered_ms", "p99"),
    "200 daemon p95": ("daemon_ms", "p95"),
    "503 p50": ("refused_ms", "p50"),
    "503 p95": ("refused_ms", "p95"),
    "503 max": ("refused_ms", "max"),
    "lag p99": ("client_lag_ms", "p99"),
}


def _pick(figures: dict[str, Any], path: tuple[str, ...]) -> Any:
    for key in path:
        figures = figures[key]
    return figures


def markdown(f: dict[str, Any], rows: list[list[str]], png: str) -> str:
    phases = {**f["phases"], "after, once drained": f["settled"]}
    lat = [[name, *(_pick(ph, path) for path in COLUMNS.values())] for name, ph in phases.items()]
    deadline = f"`deadline_ms={f['deadline_ms']:g}` on every request" if f["deadline_ms"] else "no `deadline_ms`"
    over, rss = f["phases"]["overload"], f["rss_mb"]
    return (
        f"# Overload\n\n{f['machine']}, {f['date']}; daemon pinned to `{f['pin']}`, {f['workers']} workers x "
        f"{f['ort_threads']} ORT threads, bound {f['bound']} admitted; SLO p{f['slo']['percentile']:g} <= "
        f"{f['slo']['latency_ms']:g} ms ({Path(f['slo']['policy'] or '-').name}); PNG bodies, {deadline}.\n\n"
        f"Capacity (closed loop, {f['workers']} clients): {f['capacity_rps']} req/s. Offered {f['factor']:g}x = "
        f"{over['sent_rps']} req/s Poisson for {over['seconds']:g} s, between {f['phases']['before']['seconds']:g} s "
        f"and {f['phases']['after']['seconds']:g} s at half capacity; answered {over['goodput_rps']} req/s under "
        f"overload. The client used {f['client_cpu_share_of_a_core']:.0%} of a core and ran "
        f"{f['client_priority']} nice levels above the daemon's workers (`--client-priority`); the daemon's event "
        f"loop ran {f['loop_priority']} above them (`loop_priority`). "
        f"Daemon RSS {rss['start']} -> {rss['end']} MB (max {rss['max']}).\n\n"
        + md_table(["", "measured", "target", "verdict"], rows)
        + "\n## Requests (latency ms; lag: how late the client sent)\n\n"
        + md_table(["phase", *COLUMNS], lat)
        + f"\n![timeline]({png})\n"
    )


def plot(run: Run, f: dict[str, Any], path: Path) -> None:
    """Each request's latency coloured by status with the SLO line; admitted in flight; RSS."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, aq, ar) = plt.subplots(3, 1, figsize=(13, 8), sharex=True, height_ratios=[3, 1.3, 1])
    kinds = [
        ("200", "C0", lambda s: s.status == 200),
        ("503 + Retry-After", "C1", lambda s: s.status == 503 and s.retry_after),
        ("503 without Retry-After", "C3", lambda s: s.status == 503 and not s.retry_after),
        ("other / no answer", "k", lambda s: s.status not in (200, 503)),
    ]
    for label, colour, keep in kinds:
        picked = [s for s in run.shots if keep(s)]
        if picked:
            ax.scatter(
                [s.sent_s for s in picked],
                [max(s.latency_ms, 0.05) for s in picked],
                s=3,
                color=colour,
                label=f"{label} ({len(picked)})",
                rasterized=True,
            )
    ax.axhline(f["slo"]["latency_ms"], color="r", ls="--", lw=1, label=f"SLO {f['slo']['latency_ms']:g} ms")
    ax.axhline(REFUSAL_MS, color="C1", ls=":", lw=1, label=f"refusal target {REFUSAL_MS:g} ms")
    ax.set_yscale("log")
    ax.set_ylabel("latency ms (by send time)")
    ax.legend(fontsize=7, markerscale=3, loc="upper right")
    ax.set_title(f"half capacity, {f['factor']:g}x capacity ({f['capacity_rps']} req/s, pinned {f['pin']}), half again")
    aq.step([s.t for s in run.samples], [s.inflight for s in run.samples], where="post", color="C2")
    aq.axhline(f["bound"], color="k", ls="--", lw=1, label=f"bound {f['bound']}")
    aq.axhline(f["workers"], color="0.5", ls=":", lw=1, label=f"workers {f['workers']}")
    aq.set_ylabel("admitted\nin flight")
    aq.legend(fontsize=7, loc="upper right")
    ar.plot([s.t for s in run.samples], [s.rss_mb for s in run.samples], color="C4")
    ar.set_ylabel("daemon RSS MB")
    ar.set_xlabel("seconds")
    start = f["phases"]["before"]["seconds"]
    for a in (ax, aq, ar):
        a.axvspan(start, start + f["phases"]["overload"]["seconds"], color="0.93", zorder=0)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def summary(payload: dict[str, Any], rows: Sequence[Sequence[str]], name: str) -> None:
    over, rss = payload["phases"]["overload"], payload["rss_mb"]
    print(
        f"capacity {payload['capacity_rps']} req/s; overload: offered {over['sent_rps']} req/s, answered "
        f"{over['goodput_rps']} req/s, refused {over['refused']}, other {over['other']} {over['other_kinds'] or ''}; "
        f"client lag p99 {over['client_lag_ms']['p99']} ms, client CPU {payload['client_cpu_share_of_a_core']:.0%} "
        f"of a core; daemon RSS {rss['start']} -> {rss['end']} MB"
    )
    for what, measured, target, mark in rows:
        print(f"{mark:4}  {what}: {measured} (target {target})")
    print(f"results: {RESULTS / name}.{{json,md,png}}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds of overload")
    ap.add_argument("--factor", type=float, default=3.0, help="offered load / capacity")
    ap.add_argument("--before", type=float, default=10.0, help="seconds at half capacity before the overload")
    ap.add_argument("--after", type=float, default=12.0, help="seconds at half capacity after the overload")
    ap.add_argument("--capacity-s", type=float, default=5.0, help="seconds of closed-loop capacity measurement")
    ap.add_argument(
        "--deadline",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="send deadline_ms = the SLO with every request (default)",
    )
    ap.add_argument(
        "--client-priority",
        type=int,
        default=0,
        help="nice levels this client runs above the daemon's workers, so its own scheduling delays do not count as the daemon's",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a few seconds per phase, results as overload-quick.*")
    args = ap.parse_args()
    if args.quick:
        args.before, args.duration, args.after, args.capacity_s = 2.0, 5.0, 3.0, 2.0
    name = "overload-quick" if args.quick else "overload"
    with running_daemon() as (proc, sock):
        run = uvloop.run(drive(proc.pid, sock, args))
        alive = proc.poll() is None
    payload = {**header(), **figures(run, args), "daemon_alive_at_end": alive}
    rows = targets(payload, alive)
    write_results(name, payload, markdown(payload, rows, f"{name}.png"))
    plot(run, payload, RESULTS / f"{name}.png")
    summary(payload, rows, name)


if __name__ == "__main__":
    main()
