"""Soak: good requests at half capacity for a long time while configurations switch and the
policy reloads, watching the daemon for leaks (memory, file descriptors) and failed requests.

Starts the real daemon (temp socket, shipped zoo, default policy). Capacity is measured as in
bench/overload.py, pinned to `full@1`, the slowest configuration, so that half of it is half
or less for every configuration the soak switches to. Then `--duration` s of open-loop
Poisson arrivals at half that rate, PNG and `.npy` bodies of test images, while every
`--switch-s` s an admin pins another VARIANT@BUDGET (two steps in three) or unpins (leaving
the controller in charge), and every `--reload-s` s the policy is reloaded, alternately by
`POST /v1/policy/reload` and SIGHUP. Daemon RSS and open file descriptors are read every
`--sample-s` s (psutil, /proc/PID/fd).

Targets: RSS growth from the end of `--warmup-s` to the end <= 10 MB; open fds at rest (all
client connections closed) no more after the soak than before it; no good request failed.
A 503 counts as failed: at half the capacity of the slowest configuration the queue never
needs to refuse, so a shed here means a switch or reload stalled the workers. It is also
reported apart. Writes bench/results/soak.{json,md,png} (`--quick`: soak-quick.*).

    python -m bench.soak [--duration 600] [--warmup-s 60] [--switch-s 4] [--reload-s 20] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil
import uvloop

from agent.cli.launch import running_daemon
from agent.client import Client, ClientError, DaemonUnreachable
from bench.common import RESULTS, header, md_table, write_results
from bench.loadgen import (
    Shot,
    UnixHttp,
    every,
    failure_kinds,
    open_fds,
    open_loop,
    percentiles,
    pinned_capacity,
    rss_mb,
    sample_requests,
    verdict,
)

PIN = "full@1"
RSS_GROWTH_MB = 10.0


@dataclass(frozen=True)
class Reading:
    t: float  # seconds since the soak started
    rss_mb: float
    fds: int
    socket_fds: int


class Switcher:
    """Every third step unpins (the controller takes over); the others pin a configuration
    other than the last one pinned, for long enough to outlive the next step."""

    def __init__(self, client: Client, configs: list[str], hold_s: float, rng: random.Random) -> None:
        self.client, self.configs, self.hold_s, self.rng = client, configs, hold_s, rng
        self.step, self.last, self.pins, self.unpins = 0, PIN, 0, 0
        self.errors: list[str] = []

    async def __call__(self) -> None:
        self.step += 1
        try:
            if self.step % 3 == 0:
                await asyncio.to_thread(self.client.unpin)
                self.unpins += 1
            else:
                self.last = self.rng.choice([c for c in self.configs if c != self.last])
                await asyncio.to_thread(self.client.pin, self.last, self.hold_s, "soak bench")
                self.pins += 1
        except (ClientError, DaemonUnreachable) as exc:
            self.errors.append(f"step {self.step}: {exc}")


class Reloader:
    """Alternately SIGHUP and POST /v1/policy/reload, whose answer must say it reloaded."""

    def __init__(self, client: Client, pid: int, origin: float) -> None:
        self.client, self.pid, self.origin = client, pid, origin
        self.posts, self.sighups = 0, 0
        self.times: list[float] = []
        self.errors: list[str] = []

    async def __call__(self) -> None:
        self.times.append(round(time.monotonic() - self.origin, 2))
        if len(self.times) % 2:
            os.kill(self.pid, signal.SIGHUP)
            self.sighups += 1
            return
        try:
            answer = await asyncio.to_thread(self.client.reload)
            self.posts += 1
            if not answer.get("reloaded"):
                self.errors.append(f"reload {len(self.times)}: {answer}")
        except (ClientError, DaemonUnreachable) as exc:
            self.errors.append(f"reload {len(self.times)}: {exc}")


@dataclass
class SoakRun:
    status: dict[str, Any]  # /v1/status before the soak
    capacity_rps: float
    shots: list[Shot]
    readings: list[Reading]
    switcher: Switcher
    reloader: Reloader
    fds_at_rest: dict[str, tuple[int, int]]  # before / after: (all, sockets)
    switches_counted: float | None  # the daemon's own edge_agent_config_switches_total over the soak
    status_after: dict[str, Any]


def switches_total(client: Client) -> float | None:
    """The daemon's `edge_agent_config_switches_total` counter, from /metrics."""
    for line in client.metrics().splitlines():
        if line.startswith("edge_agent_config_switches_total "):
            return float(line.split()[1])
    return None


async def measure_capacity(
    sock: Path, http: UnixHttp, requests: Sequence[bytes], seconds: float
) -> tuple[dict[str, Any], float]:
    """(status, req/s of full@1 with one back-to-back client per worker); leaves the daemon unpinned."""
    status, capacity = await pinned_capacity(
        sock, http, requests, seconds, PIN, "soak bench: capacity of the slowest configuration"
    )
    with Client(sock) as admin:
        admin.unpin()
    return status, capacity


async def drive(pid: int, sock: Path, args: argparse.Namespace) -> SoakRun:
    """Capacity, fds at rest, the soak with its admin jobs and readings, fds at rest again."""
    requests = sample_requests(16, ("png", "npy"))
    http = UnixHttp(sock)
    status, capacity = await measure_capacity(sock, http, requests, args.capacity_s)
    configs = [f"{name}@{b:g}" for name, v in sorted(status["variants"].items()) for b in v["budgets"]]
    with Client(sock) as probe:
        switches_before = switches_total(probe)
    http.close()
    await asyncio.sleep(1.0)
    before = open_fds(pid)
    daemon, readings, stop = psutil.Process(pid), [], asyncio.Event()
    rng = random.Random(args.seed)
    origin = time.monotonic()

    async def read() -> None:
        readings.append(Reading(round(time.monotonic() - origin, 2), rss_mb(daemon), *open_fds(pid)))

    with Client(sock) as pinner, Client(sock) as reloader_client:
        switcher = Switcher(pinner, configs, 3 * args.switch_s, rng)
        reloader = Reloader(reloader_client, pid, origin)
        jobs = [
            asyncio.create_task(every(args.sample_s, stop, read)),
            asyncio.create_task(every(args.switch_s, stop, switcher, args.switch_s)),
            asyncio.create_task(every(args.reload_s, stop, reloader, args.reload_s)),
        ]
        shots = await open_loop(http, requests, [("soak", 0.5 * capacity, args.duration)], origin, rng)
        stop.set()
        await asyncio.gather(*jobs)
    await read()
    http.close()
    with Client(sock) as probe:
        switches_after, status_after = switches_total(probe), probe.status()
    await asyncio.sleep(1.0)
    after = open_fds(pid)
    counted = None if switches_before is None or switches_after is None else switches_after - switches_before
    return SoakRun(
        status, capacity, shots, readings, switcher, reloader, {"before": before, "after": after}, counted, status_after
    )


def figures(run: SoakRun, args: argparse.Namespace) -> dict[str, Any]:
    """Everything the report shows, from the requests, readings and admin record of one soak."""
    ok = [s.latency_ms for s in run.shots if s.status == 200]
    shed = sum(s.status == 503 for s in run.shots)
    other = failure_kinds(run.shots)
    warm = next((r for r in run.readings if r.t >= args.warmup_s), None)
    end = run.readings[-1] if run.readings else None
    sw, rl = run.switcher, run.reloader
    return {
        "capacity_rps": round(run.capacity_rps, 1),
        "rate_rps": round(0.5 * run.capacity_rps, 1),
        "duration_s": args.duration,
        "workers": run.status["queue"]["workers"],
        "requests": {
            "sent": len(run.shots),
            "ok": len(ok),
            "shed_503": shed,
            "failed_other": sum(other.values()),
            "failed_kinds": other,
            "ok_ms": percentiles(ok),
        },
        "rss_mb": {
            "start": run.readings[0].rss_mb if run.readings else None,
            "warm_at_s": warm.t if warm else None,
            "warm": warm.rss_mb if warm else None,
            "end": end.rss_mb if end else None,
            "max": max((r.rss_mb for r in run.readings), default=None),
            "growth": round(end.rss_mb - warm.rss_mb, 2) if warm and end else None,
        },
        "fds": {
            "at_rest_before": run.fds_at_rest["before"][0],
            "at_rest_after": run.fds_at_rest["after"][0],
            "sockets_at_rest_before": run.fds_at_rest["before"][1],
            "sockets_at_rest_after": run.fds_at_rest["after"][1],
            "start": run.readings[0].fds if run.readings else None,
            "end": end.fds if end else None,
            "max": max((r.fds for r in run.readings), default=None),
        },
        "admin": {
            "pins": sw.pins,
            "unpins": sw.unpins,
            "switch_errors": sw.errors,
            "switches_counted_by_daemon": run.switches_counted,
            "reload_posts": rl.posts,
            "sighups": rl.sighups,
            "reload_errors": rl.errors,
            "reload_times": rl.times,
        },
        "daemon_after": {
            "last_error": run.status_after.get("last_error"),
            "policy_failures": run.status_after.get("policy", {}).get("failures"),
            "config": run.status_after["config"]["current"],
        },
        "readings": [asdict(r) for r in run.readings],
    }


def targets(f: dict[str, Any], alive: bool) -> list[list[str]]:
    """[what, measured, target, PASS/MISS] for each target of the issue."""
    rss, fds, req, adm = f["rss_mb"], f["fds"], f["requests"], f["admin"]
    failed = req["shed_503"] + req["failed_other"]
    admin_errors = len(adm["switch_errors"]) + len(adm["reload_errors"])
    return [
        [
            f"RSS growth after {rss['warm_at_s']} s",
            f"{rss['growth']} MB ({rss['warm']} -> {rss['end']} MB)",
            f"<= {RSS_GROWTH_MB:g} MB",
            verdict(None if rss["growth"] is None else rss["growth"] <= RSS_GROWTH_MB),
        ],
        [
            "open fds at rest",
            f"{fds['at_rest_before']} -> {fds['at_rest_after']}",
            "no more after than before",
            verdict(fds["at_rest_after"] <= fds["at_rest_before"]),
        ],
        [
            "good requests failed",
            f"{failed} of {req['sent']} ({req['shed_503']} shed 503, {req['failed_other']} other)",
            "0",
            verdict(failed == 0 and req["sent"] > 0),
        ],
        [
            "admin calls refused or failed",
            f"{admin_errors} ({adm['pins']} pins, {adm['unpins']} unpins, "
            f"{adm['reload_posts']} POST reloads, {adm['sighups']} SIGHUPs)",
            "0",
            verdict(admin_errors == 0),
        ],
        ["daemon running at the end", "yes" if alive else "no", "yes", verdict(alive)],
    ]


def markdown(f: dict[str, Any], rows: list[list[str]], png: str) -> str:
    req, adm, fds, ms = f["requests"], f["admin"], f["fds"], f["requests"]["ok_ms"]
    return (
        f"# Soak\n\n{f['machine']}, {f['date']}; {f['duration_s']:g} s at {f['rate_rps']} req/s Poisson (half the "
        f"closed-loop capacity of `{PIN}`, {f['capacity_rps']} req/s, {f['workers']} workers), PNG and `.npy` bodies; "
        f"a pin or unpin every {f['switch_s']:g} s, a policy reload (POST and SIGHUP in turn) every "
        f"{f['reload_s']:g} s.\n\n"
        + md_table(["", "measured", "target", "verdict"], rows)
        + "\n## Details\n\n"
        + md_table(
            ["figure", "value"],
            [
                [
                    "requests sent / ok / shed 503 / other",
                    f"{req['sent']} / {req['ok']} / {req['shed_503']} / {req['failed_other']}",
                ],
                ["ok latency p50 / p95 / p99 / max ms", f"{ms['p50']} / {ms['p95']} / {ms['p99']} / {ms['max']}"],
                [
                    "RSS start / warm / end / max MB",
                    f"{f['rss_mb']['start']} / {f['rss_mb']['warm']} / {f['rss_mb']['end']} / {f['rss_mb']['max']}",
                ],
                ["fds start / end / max during the soak", f"{fds['start']} / {fds['end']} / {fds['max']}"],
                [
                    "socket fds at rest before / after",
                    f"{fds['sockets_at_rest_before']} / {fds['sockets_at_rest_after']}",
                ],
                ["switches counted by the daemon", adm["switches_counted_by_daemon"]],
                [
                    "config at the end, daemon last_error",
                    f"{f['daemon_after']['config']}, {f['daemon_after']['last_error']}",
                ],
            ],
        )
        + f"\n![RSS and fds]({png})\n"
    )


def plot(f: dict[str, Any], path: Path) -> None:
    """Daemon RSS (with the warm-up value and its allowed growth) and open fds over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t"] for r in f["readings"]]
    fig, (am, af) = plt.subplots(2, 1, figsize=(12, 6), sharex=True)
    am.plot(t, [r["rss_mb"] for r in f["readings"]], color="C4", marker=".", label="RSS")
    if f["rss_mb"]["warm"] is not None:
        warm = f["rss_mb"]["warm"]
        am.axhspan(warm, warm + RSS_GROWTH_MB, color="C2", alpha=0.12, label=f"warm-up value + {RSS_GROWTH_MB:g} MB")
        am.axvline(f["rss_mb"]["warm_at_s"], color="0.5", ls=":", lw=1)
    am.set_ylabel("daemon RSS MB")
    af.plot(t, [r["fds"] for r in f["readings"]], color="C0", marker=".", label="all fds")
    af.plot(t, [r["socket_fds"] for r in f["readings"]], color="C1", marker=".", label="of which sockets")
    af.set_ylabel("open fds")
    af.set_xlabel("seconds")
    for ax in (am, af):
        for x in f["admin"]["reload_times"]:
            ax.axvline(x, color="C3", lw=0.5, alpha=0.4)
        ax.legend(fontsize=7, loc="lower right")
    am.set_title(f"soak at {f['rate_rps']} req/s with pins every {f['switch_s']:g} s; red lines: policy reloads")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of soak")
    ap.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is counted from here")
    ap.add_argument("--switch-s", type=float, default=4.0, help="seconds between pins/unpins")
    ap.add_argument("--reload-s", type=float, default=20.0, help="seconds between policy reloads")
    ap.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS/fd readings")
    ap.add_argument("--capacity-s", type=float, default=5.0, help="seconds of closed-loop capacity measurement")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="about 10 s of soak, results as soak-quick.*")
    args = ap.parse_args()
    if args.quick:
        args.duration, args.warmup_s, args.switch_s, args.reload_s, args.sample_s, args.capacity_s = 10, 3, 1.5, 3, 1, 2
    name = "soak-quick" if args.quick else "soak"
    with running_daemon() as (proc, sock):
        run = uvloop.run(drive(proc.pid, sock, args))
        alive = proc.poll() is None
    payload = {
        **header(),
        **figures(run, args),
        "switch_s": args.switch_s,
        "reload_s": args.reload_s,
        "daemon_alive_at_end": alive,
    }
    rows = targets(payload, alive)
    write_results(name, payload, markdown(payload, rows, f"{name}.png"))
    plot(payload, RESULTS / f"{name}.png")
    for what, measured, target, mark in rows:
        print(f"{mark:4}  {what}: {measured} (target {target})")
    print(f"results: {RESULTS / name}.{{json,md,png}}")


if __name__ == "__main__":
    main()
