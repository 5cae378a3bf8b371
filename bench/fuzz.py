"""Fuzz the real daemon through its Unix socket: schema-driven requests for every route, raw
malformed HTTP, and hostile payloads (image bombs, lying .npy headers and v2 tensors).

    python -m bench.fuzz [--cases 5000] [--seed N]

Counts crashes (the daemon died or stopped answering GET /v2/health/live after a case), 5xx
answers (503 with Retry-After excepted), error answers that are not JSON {"error": {...}},
requests left unanswered, and what the HTTP parser refused before the app; then checks that
a normal request still succeeds and how much the daemon's RSS grew.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from agent.cli.launch import running_daemon
from bench.common import header, md_table, write_results
from tests.fuzz.cases import CATEGORIES, catalogue, discover, generate, normal_request, strategies, tensor_case
from tests.fuzz.wire import FAILURES, NO_ANSWER, OK, PARSER_REJECTED, SHED, Case, Outcome, health, run_case

RSS_LIMIT_MB = 20.0
SHARES = {"schema": 0.4, "raw": 0.3, "payload": 0.3}


class Crashed(Exception):
    """The daemon died or stopped answering its health check."""


@dataclass
class Tally:
    """Every case's verdict, by category and by family; the first failures in full."""

    verdicts: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    statuses: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    families: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    failures: list[dict[str, str]] = field(default_factory=list)
    rss_growth_mb: Counter[str] = field(default_factory=Counter)  # RSS gained across each family's cases
    crash: str | None = None

    def add(self, case: Case, outcome: Outcome) -> None:
        self.verdicts[case.category][outcome.verdict] += 1
        self.families[f"{case.category}/{case.family}"][outcome.verdict] += 1
        for a in outcome.answers:
            self.statuses[case.category][f"{a.status // 100}xx"] += 1
        if not outcome.answers:
            self.statuses[case.category]["none"] += 1
        if outcome.failed and len(self.failures) < 50:
            self.failures.append({"verdict": outcome.verdict, "detail": outcome.detail, "case": case.describe()})

    def count(self, verdict: str, category: str | None = None) -> int:
        cats = [category] if category else list(self.verdicts)
        return sum(self.verdicts[c][verdict] for c in cats)

    def cases(self, category: str | None = None) -> int:
        cats = [category] if category else list(self.verdicts)
        return sum(sum(self.verdicts[c].values()) for c in cats)


def scrape(sock: Path) -> dict[str, float]:
    """Counters from GET /metrics: internal errors and 500 answers so far."""
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(sock)), base_url="http://edge-agent", timeout=30) as http:
        text = http.get("/metrics").text
    internal = re.findall(r'^edge_agent_errors_total\{code="internal"\} (\S+)$', text, re.M)
    status500 = re.findall(r'^edge_agent_requests_total\{route="[^"]*",status="500"\} (\S+)$', text, re.M)
    return {"internal_errors": sum(map(float, internal)), "answers_500": sum(map(float, status500))}


def error_log_lines(path: Path) -> list[str]:
    """Daemon log records at level error or above (JSON lines)."""
    lines = []
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("level") in ("error", "critical", "exception"):
            lines.append(line[:500])
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=5000, help="generated cases in all (the named catalogue comes on top)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for an answer")
    args = ap.parse_args()
    started = time.monotonic()
    tally = Tally()
    with running_daemon() as (proc, sock):
        target = discover(sock)
        process = psutil.Process(proc.pid)
        warm = [run_case(sock, normal_request() if i % 2 else tensor_case(32 + i)) for i in range(50)]
        if any(o.verdict != OK or o.answers[0].status != 200 for o in warm):
            raise SystemExit(f"warm-up requests failed: {[o.detail for o in warm if o.verdict != OK]}")
        rss_before = process.memory_info().rss / 2**20
        rss_peak = rss_before
        metrics_before = scrape(sock)

        def sink(case: Case) -> None:
            nonlocal rss_peak
            rss = process.memory_info().rss
            outcome = run_case(sock, case, args.timeout)
            tally.add(case, outcome)
            tally.rss_growth_mb[f"{case.category}/{case.family}"] += (process.memory_info().rss - rss) / 2**20
            if proc.poll() is not None or not health(sock):
                tally.crash = f"after {case.describe()}: exit status {proc.poll()}"
                raise Crashed(tally.crash)
            if tally.cases() % 50 == 0:
                rss_peak = max(rss_peak, process.memory_info().rss / 2**20)
                print(
                    f"\r{tally.cases()} cases, {sum(tally.count(f) for f in FAILURES)} failures",
                    end="",
                    file=sys.stderr,
                )

        budgets = {c: round(args.cases * SHARES[c]) for c in CATEGORIES}
        budgets["payload"] = args.cases - budgets["schema"] - budgets["raw"]
        try:
            for case in catalogue(target):
                sink(case)
            for category, strategy in strategies(target).items():
                generate(strategy, budgets[category], args.seed, sink)
        except Crashed:
            pass
        print(file=sys.stderr)
        final_ok = False
        rss_after = rss_peak
        if tally.crash is None:
            finals = [run_case(sock, normal_request()), run_case(sock, tensor_case(64))]
            final_ok = all(o.verdict == OK and o.answers[0].status == 200 for o in finals)
            rss_after = process.memory_info().rss / 2**20
            rss_peak = max(rss_peak, rss_after)
            metrics_after = scrape(sock)
        else:
            metrics_after = metrics_before
        errors_logged = error_log_lines(sock.parent / "daemon.log")
    elapsed = time.monotonic() - started
    failures = {f: tally.count(f) for f in FAILURES}
    server_5xx = tally.count("server_error")
    result: dict[str, Any] = {
        **header(),
        "seed": args.seed,
        "cases": tally.cases(),
        "generated_budget": budgets,
        "per_category": {
            c: {"cases": tally.cases(c), "verdicts": dict(tally.verdicts[c]), "answers": dict(tally.statuses[c])}
            for c in CATEGORIES
        },
        "crashes": int(tally.crash is not None),
        "crash": tally.crash,
        "server_errors_5xx": server_5xx,
        "failures": failures,
        "shed_503_with_retry_after": tally.count(SHED),
        "rejected_by_http_parser": {
            "json_400": tally.count(PARSER_REJECTED),
            "no_answer": tally.count(NO_ANSWER),
            "total": tally.count(PARSER_REJECTED) + tally.count(NO_ANSWER),
        },
        "internal_errors_counted_by_daemon": metrics_after["internal_errors"] - metrics_before["internal_errors"],
        "error_log_lines": len(errors_logged),
        "error_log_sample": errors_logged[:10],
        "final_request_ok": final_ok,
        "rss_mb": {
            "before": round(rss_before, 1),
            "after": round(rss_after, 1),
            "peak": round(rss_peak, 1),
            "growth": round(rss_after - rss_before, 1),
            "limit_growth": RSS_LIMIT_MB,
        },
        "seconds": round(elapsed, 1),
        "rss_growth_by_family_mb": {k: round(v, 2) for k, v in tally.rss_growth_mb.most_common(10)},
        "families": {k: dict(v) for k, v in sorted(tally.families.items())},
        "failure_samples": tally.failures,
    }
    passed = (
        tally.crash is None
        and not any(failures.values())
        and final_ok
        and result["rss_mb"]["growth"] <= RSS_LIMIT_MB
        and result["internal_errors_counted_by_daemon"] == 0
    )
    result["passed"] = passed
    rows = [
        [
            c,
            tally.cases(c),
            tally.count(OK, c),
            tally.count(SHED, c),
            tally.count(PARSER_REJECTED, c),
            tally.count(NO_ANSWER, c),
            sum(tally.count(f, c) for f in FAILURES),
            tally.statuses[c]["2xx"],
            tally.statuses[c]["4xx"],
            tally.statuses[c]["5xx"],
            tally.statuses[c]["none"],
        ]
        for c in CATEGORIES
    ]
    md = (
        f"# Fuzzing\n\n{result['machine']}, {result['date']}, seed {args.seed}, {elapsed:.0f} s\n\n"
        + md_table(
            [
                "category",
                "cases",
                "ok",
                "shed (503 + Retry-After)",
                "HTTP parser's JSON 400",
                "no answer (not HTTP / truncated)",
                "failures",
                "2xx",
                "4xx",
                "5xx",
                "no answer",
            ],
            rows,
        )
        + "\n"
        + md_table(
            [
                "crashes",
                "5xx to client errors",
                "non-JSON errors",
                "unanswered",
                "internal errors logged",
                "final request",
                "RSS before MB",
                "RSS after MB",
                "growth MB",
                "peak MB",
            ],
            [
                [
                    result["crashes"],
                    server_5xx,
                    failures["non_json_error"],
                    failures["unanswered"] + failures["timeout"],
                    result["internal_errors_counted_by_daemon"],
                    "ok" if final_ok else "FAILED",
                    *(result["rss_mb"][k] for k in ("before", "after", "growth", "peak")),
                ]
            ],
        )
        + f"\n**{'PASSED' if passed else 'FAILED'}**\n"
    )
    if tally.failures:
        md += (
            "\n## First failures\n\n"
            + "\n".join(f"- {f['verdict']}: {f['detail']} -- `{f['case'][:200]}`" for f in tally.failures[:10])
            + "\n"
        )
    write_results("fuzz", result, md)
    print(md)
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
