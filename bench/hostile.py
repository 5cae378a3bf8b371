"""Hostile local clients against the real daemon (issue 20): what the other clients see while
300 connections hold inference bodies open or send them at 1 byte/s, how the event loop answers
while three 7 MB v2 bodies of nested arrays are decoded, and how far the daemon's RSS rises
under four image bombs at once (and under four RGBA frames the decode budget admits).

    python -m bench.hostile [--seconds 8]

Writes bench/results/hostile.json and .md. The probes are tests/hostile.py's (the same ones
tests/test_hostile.py asserts the issue's bounds with).
"""

from __future__ import annotations

import argparse
import functools
import io
import json
import sys
from pathlib import Path
from typing import Any

from PIL import Image

from agent.cli.launch import running_daemon
from agent.daemon.preflight import raise_fd_limit
from bench.common import header, md_table, write_results
from model_zoo import data
from tests import hostile

HOLDERS = 300
CONTROL_BOUND_MS, CLASSIFY_BOUND_MS, LIVE_P99_BOUND_MS, RSS_BOUND_MB = 100.0, 1000.0, 50.0, 200.0


def stats(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": round(hostile.percentile(values, 50), 1),
        "p99_ms": round(hostile.percentile(values, 99), 1),
        "max_ms": round(max(values), 1),
    }


def holding(sock: Path, png: bytes, rate: int, seconds: float) -> dict[str, Any]:
    with hostile.holding(sock, HOLDERS, rate) as load:
        rounds = hostile.probe_rounds(sock, png, seconds, every_s=0.25)
    hostile.request(sock, "DELETE", "/v1/pin")
    out: dict[str, Any] = {"rounds": len(rounds), "holders_opened": load.opened, "holders_answered": load.answers}
    for name in ("status", "ready", "pin", "classify"):
        answers = [getattr(r, name) for r in rounds]
        out[name] = {**stats([a.ms for a in answers]), "ok": sum(a.status == 200 for a in answers)}
    return out


def bombs(sock: Path, pid: int) -> dict[str, Any]:
    made = hostile.image_bombs()
    four = [made["png"], made["tiff"], made["webp"], made["png"]]
    frame = Image.fromarray(data.sample(0, "test", 1).image).convert("RGBA").resize((2000, 2000))
    buf = io.BytesIO()
    frame.save(buf, format="PNG")
    admitted = [("image/png", buf.getvalue())] * 4
    out: dict[str, Any] = {"sizes_bytes": {name: len(body) for name, (_, body) in made.items()}}
    for label, bodies in (("bombs_6324_rgba", four), ("frames_2000_rgba", admitted)):
        calls = [
            functools.partial(hostile.request, sock, "POST", "/v1/classify", body, {"Content-Type": kind})
            for kind, body in bodies
        ]
        growth, answers = hostile.peak_rss_growth_mib(pid, functools.partial(hostile.concurrently, calls))
        out[label] = {
            "peak_rss_growth_mib": round(growth, 1),
            "answers": [a.status for a in answers],  # type: ignore[attr-defined]
            "first_error": next((json.loads(a.body) for a in answers if a.status != 200), None),  # type: ignore[attr-defined]
        }
    truncated = hostile.request(sock, "POST", "/v1/classify", hostile.truncated_jpeg(), {"Content-Type": "image/jpeg"})
    out["truncated_jpeg"] = {"bytes": len(hostile.truncated_jpeg()), "status": truncated.status}
    return out


def markdown(result: dict[str, Any]) -> str:
    rows = []
    for label, key in (("300 bodies held open", "held_open"), ("300 bodies at 1 byte/s", "one_byte_a_second")):
        r = result[key]
        for name in ("status", "ready", "pin", "classify"):
            s = r[name]
            rows.append([label, name, s["p50_ms"], s["p99_ms"], s["max_ms"], f"{s['ok']}/{r['rounds']}"])
    live = result["nested_v2"]
    b = result["memory"]
    return (
        "# Hostile local clients (issue 20)\n\n"
        f"{result['machine']}, {result['date']}. `python -m bench.hostile`; probes in tests/hostile.py.\n\n"
        f"## Slot holding: {HOLDERS} connections, each a v2 infer request declaring 1000 bytes of body\n\n"
        "From another client, one after another every 0.25 s: `GET /v1/status`, `GET /v2/health/ready`, an "
        "admin `POST /v1/pin` (root), a `POST /v1/classify` of a 128 px PNG. Bounds: 100 ms, 1 s for classify.\n\n"
        + md_table(["load", "probe", "p50 ms", "p99 ms", "max ms", "200s"], rows)
        + f"\nHolders cut (408) and reopened: held open {result['held_open']['holders_answered']}, "
        f"1 byte/s {result['one_byte_a_second']['holders_answered']}.\n\n"
        "## Loop freezes: three 7 MB v2 bodies of 170k nested arrays in flight\n\n"
        f"`GET /v2/health/live` every 10 ms for {live['seconds']} s: {live['samples']} samples, p50 "
        f"{live['p50_ms']} ms, p99 {live['p99_ms']} ms (bound 50), max {live['max_ms']} ms; the senders' "
        f"answers: {live['sender_answers']}.\n\n"
        "## Memory bombs: four at once, peak RSS growth of the daemon (VmHWM after clear_refs)\n\n"
        + md_table(
            ["four requests", "peak RSS growth MiB", "answers"],
            [
                [
                    "6324x6324 RGBA: PNG, TIFF, WebP, PNG",
                    b["bombs_6324_rgba"]["peak_rss_growth_mib"],
                    b["bombs_6324_rgba"]["answers"],
                ],
                [
                    "2000x2000 RGBA PNG x4 (within the budget)",
                    b["frames_2000_rgba"]["peak_rss_growth_mib"],
                    b["frames_2000_rgba"]["answers"],
                ],
            ],
        )
        + f"\nBomb sizes (bytes): {b['sizes_bytes']}. The {b['truncated_jpeg']['bytes']}-byte JPEG declaring "
        f"6000x6000: {b['truncated_jpeg']['status']}.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="How long each load is probed")
    args = parser.parse_args(argv)
    raise_fd_limit()
    png_buf = io.BytesIO()
    Image.fromarray(data.sample(0, "test", 1).image).save(png_buf, format="PNG")
    png = png_buf.getvalue()
    result: dict[str, Any] = {**header(), "holders": HOLDERS}
    with running_daemon() as (proc, sock):
        for path in ("/v1/status", "/v2/health/ready", "/metrics"):
            hostile.request(sock, "GET", path)
        result["held_open"] = holding(sock, png, 0, args.seconds)
        result["one_byte_a_second"] = holding(sock, png, 1, args.seconds)
        body = hostile.nested_v2_body()
        latencies, load = hostile.live_latencies(sock, body, 3, args.seconds)
        result["nested_v2"] = {
            "body_bytes": len(body),
            "arrays": body.count(b"["),
            "seconds": args.seconds,
            "samples": len(latencies),
            **stats(latencies),
            "sender_answers": load.answers,
        }
        result["memory"] = bombs(sock, proc.pid)
    control = [result[k][p]["max_ms"] for k in ("held_open", "one_byte_a_second") for p in ("status", "ready", "pin")]
    result["within_bounds"] = {
        "control_max_ms<=100": max(control) <= CONTROL_BOUND_MS,
        "classify_max_ms<=1000": max(result[k]["classify"]["max_ms"] for k in ("held_open", "one_byte_a_second"))
        <= CLASSIFY_BOUND_MS,
        "live_p99_ms<=50": result["nested_v2"]["p99_ms"] <= LIVE_P99_BOUND_MS,
        "bombs_rss_mib<=200": result["memory"]["bombs_6324_rgba"]["peak_rss_growth_mib"] <= RSS_BOUND_MB,
    }
    text = markdown(result)
    json_path, md_path = write_results("hostile", result, text)
    print(text)
    print(f"wrote {json_path} and {md_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
