"""`edge-agent demo` from a user's shell (a terminal of 80 columns, and a pipe), and `policy
simulate` on the shipped trace: readable at 80 columns, every reason whole, plots titled,
their legends over nothing, written where the output says and never into the checkout."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import pty
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from rich.console import Console

from agent.cli.demo import _summary, timeline_figure
from agent.cli.scenario import Reaction, Record, default_schedule
from agent.control.controller import Option, options_from_manifest
from agent.control.simulate import Step, simulate, summary
from agent.control.simulate import timeline_figure as simulate_figure
from agent.paths import default_zoo_dir
from agent.policy.loader import load_policy
from agent.telemetry.formats import read_trace
from agent.zoo.manifest import latency_table, load_manifest

REPO = Path(__file__).resolve().parent.parent
TRACES = sorted((REPO / "policies" / "traces").glob("*.jsonl"))
DEFAULT_POLICY = REPO / "policies" / "default.yaml"
#: The demo's fastest settings: 7 phases of half a second, twice (adaptive, then full@1 pinned).
QUICK_DEMO = ["demo", "--phase-s", "0.5", "--rate", "10"]
COLUMNS = 80
#: How long a demo run may take (seconds; about 30 on an idle 2-core machine), and how long
#: it gets to stop on Ctrl-C after that: together under pytest's timeout.
RUN_S, STOP_S = 200, 60
# SGR (colour) sequences sit inside a line; any other control sequence moves the cursor, so
# what follows it starts a line of its own on the screen.
SGR = re.compile(r"\x1b\[[0-9;]*m")
CONTROL = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


def _daemons() -> set[int]:
    """Demo daemons (their socket and telemetry file lie in the demo's temp folder), not those
    other test runs on the machine may have started."""
    return {
        p.pid
        for p in psutil.process_iter(["cmdline"])
        if "serve" in (p.info["cmdline"] or []) and "edge-agent-demo-" in " ".join(p.info["cmdline"] or [])
    }


def _screen_lines(raw: str) -> list[str]:
    """The lines as a terminal shows them, each frame of a live view included, without colour."""
    text = SGR.sub("", raw).replace("\r\n", "\n")  # the terminal's line ends, then lone \r: line starts
    return [line.rstrip() for line in CONTROL.sub("\n", text).split("\n")]


def _stop(proc: subprocess.Popen[Any]) -> None:
    """Ctrl-C, as a user would (the demo then stops what it started), then anything left of
    its process group (its daemons), so that a test that ran out of time leaves nothing behind."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(STOP_S)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run_in_terminal(args: list[str], cwd: Path, columns: int, rows: int) -> tuple[int | None, str]:
    """Run `python -m agent ARGS` in a pseudo-terminal of `columns` x `rows`, as a user would;
    the exit status is None when it did not end within RUN_S."""
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
    env = {**os.environ, "COLUMNS": str(columns), "LINES": str(rows), "TERM": "xterm-256color"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        cwd=cwd,
        env=env,
        start_new_session=True,
    )
    os.close(terminal)
    out = bytearray()
    deadline = time.monotonic() + RUN_S
    try:
        while time.monotonic() < deadline:
            if not select.select([controller], [], [], 1.0)[0]:
                continue
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # EIO: the process closed the terminal
                break
            if not chunk:
                break
            out += chunk
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(max(1.0, deadline - time.monotonic()))
        rc = proc.poll()
    finally:
        _stop(proc)
        os.close(controller)
    return rc, out.decode("utf-8", errors="replace")


def _run_piped(args: list[str], cwd: Path) -> tuple[int | None, str, str]:
    """`python -m agent ARGS` with its output piped, as in a script or CI log."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": str(COLUMNS)},
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_S)
    except subprocess.TimeoutExpired:
        _stop(proc)
        out, err = proc.communicate()
        return None, out, err
    return proc.returncode, out, err


def _unwrap(lines: list[str], start: re.Pattern[str], indent: int) -> Iterator[str]:
    """Cells that wrap under a first line matching `start` (its last group is the cell's first
    part), continued by lines indented by `indent` spaces: each cell's text joined again."""
    parts: list[str] | None = None
    for line in lines:
        match = start.match(line)
        if match:
            if parts:
                yield " ".join(parts)
            parts = [match.groups()[-1].strip()]
        elif parts is not None and line.startswith(" " * indent) and line[indent : indent + 1] not in ("", " "):
            parts.append(line.strip())
        else:
            if parts:
                yield " ".join(parts)
            parts = None
    if parts:
        yield " ".join(parts)


def _panel_rows(lines: list[str], label: str) -> Iterator[str]:
    """The value of a row of the demo's panel (`│ LABEL   value │`), its wrapped lines joined."""
    head = re.compile(rf"^│ {re.escape(label)}( +)(\S.*?)\s*│$")
    parts: list[str] | None = None
    indent = 0
    for line in lines:
        match = head.match(line)
        if match:
            if parts:
                yield " ".join(parts)
            parts, indent = [match.group(2)], len("│ ") + len(label) + len(match.group(1))
        elif parts is not None and re.match(rf"^│ {{{indent - 1}}}\S", line) and line.endswith("│"):
            parts.append(line[indent:-1].strip())
        else:
            if parts:
                yield " ".join(parts)
            parts = None


def _results_folder(lines: list[str]) -> Path:
    [folder] = [m.group(1) for line in lines if (m := re.match(r"^results in (/.*):$", line))]
    return Path(folder)


def _preceded_by_blank(lines: list[str], title: str) -> bool:
    found = [i for i, line in enumerate(lines) if line.strip().startswith(title)]
    return bool(found) and all(i > 0 and not lines[i - 1].strip() for i in found)


@pytest.mark.daemon
def test_demo_at_80_columns_wraps_every_reason_whole_and_writes_outside_the_checkout() -> None:
    """In a terminal of 80 x 24, run from the checkout's root as the README says: every line
    fits, nothing is cut (no ellipsis, no cropped live view), every reason the live view
    showed reads whole once its wrapped lines are joined, and the results are elsewhere."""
    before, tmp_before = _daemons(), set(Path("/tmp").glob("edge-agent-demo-*"))
    rc, raw = _run_in_terminal(QUICK_DEMO, REPO, COLUMNS, 24)
    lines = _screen_lines(raw)
    assert rc == 0, "\n".join(lines[-60:])
    folder = _results_folder(lines)
    try:
        assert not folder.is_relative_to(REPO), f"results written into the checkout: {folder}"
        assert (folder / "timeline.png").stat().st_size > 10_000
        journal = [json.loads(line) for line in (folder / "decisions.jsonl").read_text().splitlines()]
        reasons = {e["reason"] for e in journal}
        switches = {f"{e['config']}: {e['reason']}" for e in journal}

        too_wide = [line for line in lines if len(line) > COLUMNS]
        assert not too_wide, too_wide[:3]
        assert not any("…" in line or line.strip() == "..." for line in lines), "something was cut"
        shown = list(_unwrap(lines, re.compile(r"^(\d\d:\d\d:\d\d)  (\S.*)$"), len("00:00:00  ")))
        whys = list(_panel_rows(lines, "why"))
        assert shown and whys, "\n".join(lines[-60:])
        assert set(shown) <= switches, sorted(set(shown) - switches)[:2]
        assert set(whys) <= reasons, sorted(set(whys) - reasons)[:2]
        assert _preceded_by_blank(lines, "summary (SLO")
        assert _preceded_by_blank(lines, "edge-agent vs pinned configurations")
        assert any("pinned full@1" in line for line in lines)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    assert _daemons() <= before, "the demo left a daemon running"
    assert set(Path("/tmp").glob("edge-agent-demo-*")) <= tmp_before, "the demo left its socket folder behind"


@pytest.mark.daemon
def test_demo_piped_keeps_each_title_apart_and_writes_where_asked(tmp_path: Path) -> None:
    results = tmp_path / "demo results"
    before = _daemons()
    rc, out, err = _run_piped([*QUICK_DEMO, "--results", str(results)], tmp_path)
    assert rc == 0, out[-3000:] + err[-3000:]
    assert _daemons() <= before, "the demo left a daemon running"
    lines = out.splitlines()
    # Only the results' path may run past the width (a long one): split, it could not be copied.
    assert all(len(line) <= COLUMNS or line == f"results in {results.resolve()}:" for line in lines)
    assert any(line.startswith("╭") and "edge-agent demo" in line for line in lines), "the view's last state"
    assert _preceded_by_blank(lines, "summary (SLO")
    assert _preceded_by_blank(lines, "edge-agent vs pinned configurations")
    assert _results_folder(lines) == results.resolve()
    assert (results / "timeline.png").stat().st_size > 10_000 and (results / "decisions.jsonl").stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo results"], "wrote into the working directory"


def test_the_summary_fits_80_columns_with_every_configuration_whole() -> None:
    schedule = default_schedule()
    configs = ["full@1", "int8-lowres@0.25", "int8-lowres@0.35", "int8-lowres@0.5", "pruned@0.35"]
    phase = {"requests": 1234, "attainment": 1.0, "p95_ms": 1234.56, "accuracy": 1.0, "configs": configs}
    summary_ = {"phases": [phase] * len(schedule), "overall": phase}
    reactions = [Reaction(None), Reaction(12.75, ((13.5, 14.25),))] + [Reaction(0.0)] * (len(schedule) - 2)
    console = Console(width=COLUMNS, record=True, file=open(os.devnull, "w"))  # noqa: SIM115
    console.print(_summary(summary_, reactions, schedule, 25.0))
    text = console.export_text()
    assert max(len(line) for line in text.splitlines()) <= COLUMNS
    assert "…" not in text
    words = set(text.split())
    assert set(configs) <= words and {"never", "12.75", "-"} <= words


def test_a_later_miss_is_told_in_words() -> None:
    assert str(Reaction(0.73, ((1.2, 1.27), (1.45, 1.45)))) == (
        "back under the SLO 0.73 s after the step; over it later at 1.2-1.27, 1.45 s into the phase"
    )
    assert str(Reaction(None)) == "still over the SLO at the phase's end"
    assert (
        str(Reaction(0.0, ((3.0, 3.5),)))
        == "not over the SLO right after the step; over it later at 3-3.5 s into the phase"
    )


def _overlaps(a: Bbox, b: Bbox) -> bool:
    return bool(a.overlaps(b))


def test_the_demo_timeline_is_titled_and_its_legend_covers_no_point_or_phase_name() -> None:
    rng = random.Random(0)
    schedule = default_schedule()
    configs = ["full@1", "int8@0.5", "int8-lowres@0.25", "pruned@0.35", "refused"]
    records = [
        Record(t / 10, rng.uniform(1, 150), 200, rng.choice(configs), True, int(t / 10 // 2)) for t in range(140)
    ]
    fig = timeline_figure(records, schedule, 2.0, 25.0)
    fig.draw_without_rendering()
    assert fig.get_suptitle()
    [ax] = fig.axes
    [phases] = ax.child_axes  # the phases' names, on an axis above the plot
    names = [t for t in phases.get_xticklabels() if t.get_text()]
    assert [t.get_text() for t in names] == [p.name for p in schedule]
    [legend] = fig.legends
    box = legend.get_window_extent()
    assert not _overlaps(box, ax.get_window_extent())
    assert not any(_overlaps(box, t.get_window_extent()) for t in names)
    assert not any(_overlaps(a.get_window_extent(), b.get_window_extent()) for a, b in itertools.pairwise(names))


def _options() -> list[Option]:
    manifest = load_manifest(default_zoo_dir() / "manifest.json")
    return options_from_manifest(manifest, latency_table(manifest, None), {v.name for v in manifest.variants}, 1, 95)


def _steps() -> list[Step]:
    return simulate(load_policy(DEFAULT_POLICY), read_trace(TRACES[0]), _options())


def test_the_simulate_timeline_is_titled_and_its_legends_cover_no_axes() -> None:
    fig: Figure = simulate_figure(_steps(), "policy simulate: a title", {o.config: o.accuracy for o in _options()})
    fig.draw_without_rendering()
    assert fig.get_suptitle() == "policy simulate: a title"
    legends = [legend for a in fig.axes if (legend := a.get_legend()) is not None]
    assert len(legends) == 2
    for legend in legends:
        assert not any(_overlaps(legend.get_window_extent(), a.get_window_extent()) for a in fig.axes)


def test_a_recorded_trace_is_shipped() -> None:
    assert TRACES, "policies/traces/ must hold at least one recorded trace"
    entries = read_trace(TRACES[0])
    assert len(entries) >= 30
    assert any(e.observed for e in entries)


def test_simulate_replays_the_trace_through_the_controller() -> None:
    steps = _steps()
    info = summary(steps)
    assert info["steps"] == len(read_trace(TRACES[0])) and info["switches"] >= 1
    assert info["predicted_attainment"] is not None
    assert all(s.decision.reason for s in steps)


def test_simulate_shows_the_prediction_its_reason_quotes() -> None:
    """The latency a step shows (table, plot) is the one its reason quotes for the configuration
    in force: one latency model, not a second estimate beside the controller's."""
    steps = _steps()
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


def _simulate_cli(*extra: str, cwd: Path) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", "policy", "simulate", str(DEFAULT_POLICY), "--trace", str(TRACES[0]), *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "COLUMNS": str(COLUMNS)},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.splitlines()


def _plot_path(lines: list[str]) -> Path:
    [i] = [i for i, line in enumerate(lines) if line == "timeline (PNG):"]
    return Path(lines[i + 1].strip())


@pytest.mark.daemon
def test_policy_simulate_at_80_columns_prints_every_switch_reason_whole() -> None:
    lines = _simulate_cli("--plot", cwd=REPO)
    plot = _plot_path(lines)
    try:
        assert plot.is_absolute() and not plot.is_relative_to(REPO), f"plot written into the checkout: {plot}"
        assert plot.stat().st_size > 10_000
    finally:
        shutil.rmtree(plot.parent, ignore_errors=True)
    assert max(len(line) for line in lines) <= COLUMNS
    assert any("predicted SLO attainment" in line for line in lines)
    start = next(line for line in lines if re.match(r"^\s*\d+\.\d s  ", line))
    indent = len(re.match(r"^\s*\d+\.\d s  ", start).group(0))  # type: ignore[union-attr]
    shown = list(_unwrap(lines, re.compile(r"^(\s*\d+\.\d s)  (\S.*)$"), indent))
    switches = [s.decision.reason for s in _steps() if s.decision.switch]
    assert len(shown) == len(switches)
    for cell, reason in zip(shown, switches, strict=True):
        assert cell.endswith(" " + reason), (cell, reason)


@pytest.mark.daemon
def test_policy_simulate_plot_goes_to_the_results_folder_asked_for(tmp_path: Path) -> None:
    results = tmp_path / "plots"
    lines = _simulate_cli("--plot", "--results", str(results), cwd=tmp_path)
    assert _plot_path(lines) == results.resolve() / f"{DEFAULT_POLICY.stem}-on-{TRACES[0].stem}.png"
    assert _plot_path(lines).stat().st_size > 10_000
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]
    assert not any("timeline" in line for line in _simulate_cli(cwd=tmp_path)), "no plot unless asked"
    assert [p.name for p in tmp_path.iterdir()] == ["plots"]
