"""`edge-agent demo` from a user's shell, and `policy simulate` on the shipped trace."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from agent.control.simulate import simulate, summary
from agent.policy.loader import load_policy
from agent.telemetry.formats import read_trace

REPO = Path(__file__).resolve().parent.parent
TRACES = sorted((REPO / "policies" / "traces").glob("*.jsonl"))


def _daemons() -> set[int]:
    return {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "serve" in (p.info["cmdline"] or []) and "agent" in " ".join(p.info["cmdline"] or [])
    }


@pytest.mark.daemon
def test_demo_quick_mode_finishes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    before = _daemons()
    tmp_before = set(Path("/tmp").glob("edge-agent-demo-*"))
    out = tmp_path / "timeline.png"
    result = subprocess.run(
        [sys.executable, "-m", "agent", "demo", "--phase-s", "2", "--rate", "15", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "summary" in result.stdout and "attainment" in result.stdout and str(out) in result.stdout.replace("\n", "")
    assert "edge-agent vs pinned" in result.stdout and "pinned full@1" in result.stdout
    assert out.stat().st_size > 10_000
    assert _daemons() <= before, "the demo left a daemon running"
    assert set(Path("/tmp").glob("edge-agent-demo-*")) <= tmp_before, "the demo left its socket folder behind"


def test_a_recorded_trace_is_shipped() -> None:
    assert TRACES, "policies/traces/ must hold at least one recorded trace"
    entries = read_trace(TRACES[0])
    assert len(entries) >= 30
    assert any(e.observed for e in entries)


def test_simulate_replays_the_trace_through_the_controller() -> None:
    policy = load_policy(REPO / "policies" / "default.yaml")
    from agent.control.controller import options_from_manifest
    from agent.paths import default_zoo_dir
    from agent.zoo.manifest import latency_table, load_manifest

    manifest = load_manifest(default_zoo_dir() / "manifest.json")
    options = options_from_manifest(manifest, latency_table(manifest, None), {v.name for v in manifest.variants}, 1, 95)
    steps = simulate(policy, read_trace(TRACES[0]), options)
    info = summary(steps)
    assert info["steps"] == len(read_trace(TRACES[0])) and info["switches"] >= 1
    assert info["predicted_attainment"] is not None
    assert all(s.decision.reason for s in steps)


def test_simulate_shows_the_prediction_its_reason_quotes() -> None:
    """The latency a step shows (table, plot) is the one its reason quotes for the configuration
    in force: one latency model, not a second estimate beside the controller's."""
    policy = load_policy(REPO / "policies" / "default.yaml")
    from agent.control.controller import options_from_manifest
    from agent.paths import default_zoo_dir
    from agent.zoo.manifest import latency_table, load_manifest

    manifest = load_manifest(default_zoo_dir() / "manifest.json")
    options = options_from_manifest(manifest, latency_table(manifest, None), {v.name for v in manifest.variants}, 1, 95)
    steps = simulate(policy, read_trace(TRACES[0]), options)
    quoted = 0
    for s in steps:
        if s.latency_ms is None:
            continue
        assert s.latency_ms == pytest.approx(s.decision.predictions[str(s.config)], abs=0.001)
        match = re.search(rf"{re.escape(str(s.config))} predicted ([0-9.]+) ms", s.decision.reason)
        if match is None:
            match = re.search(r"^keep \S+: predicted ([0-9.]+) ms", s.decision.reason)
        if match:
            assert float(match.group(1)) == pytest.approx(s.latency_ms, abs=0.051)
            quoted += 1
    assert quoted >= len(steps) // 2


@pytest.mark.daemon
def test_policy_simulate_cli_prints_decisions_and_writes_the_plot(tmp_path: Path) -> None:
    out = tmp_path / "sim.png"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent",
            "policy",
            "simulate",
            str(REPO / "policies" / "default.yaml"),
            "--trace",
            str(TRACES[0]),
            "--plot",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "predicted SLO attainment" in result.stdout and "switches" in result.stdout
    assert out.stat().st_size > 10_000
