"""`edge-agent status` and `policy reload` for a person: the daemon's answers (the JSON of
`GET /v1/status` and `POST /v1/policy/reload`) as rich sections and one-line results.

Pure functions of the answer and the caller's clock: every time is shown as an age against
`now`, so tests pass a fixed `now` and the output does not depend on when they run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rich import box
from rich.console import Group, RenderableType
from rich.markup import escape
from rich.table import Table
from rich.text import Text


def span(seconds: float) -> str:
    """A duration as a person reads it: `12 s`, `4 min 5 s`, `2 h 10 min`, `3 d 4 h`."""
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    m, s = divmod(s, 60)
    if m < 60:
        return f"{m} min {s} s" if s and m < 10 else f"{m} min"
    h, m = divmod(m, 60)
    if h < 24:
        return f"{h} h {m} min" if m else f"{h} h"
    d, h = divmod(h, 24)
    return f"{d} d {h} h" if h else f"{d} d"


def ago(at: float | None, now: float) -> str:
    """A wall-clock time (epoch seconds) as an age against `now`: `12 s ago`, `in 9 min`."""
    if at is None:
        return "never"
    delta = now - at
    if abs(delta) < 1:
        return "just now"
    return f"{span(delta)} ago" if delta > 0 else f"in {span(-delta)}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def _pct(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}%"


#: Every section's keys in one column width, so the values line up down the whole page.
KEY_WIDTH = 14


def _section(title: str, rows: Iterable[tuple[str, str | Text]]) -> Table:
    """A titled block of `key  value` lines; values wrap (never cut) at any width."""
    table = Table(title=title, title_justify="left", title_style="bold", show_header=False, box=None, pad_edge=False)
    table.add_column("key", style="cyan", no_wrap=True, min_width=KEY_WIDTH)
    table.add_column("value", overflow="fold")
    for key, value in rows:
        table.add_row(key, value if isinstance(value, Text) else escape(value))
    return table


def _listing(title: str, columns: tuple[str, ...], text: str) -> Table:
    """A titled table with a rule under its header: short `columns` kept whole, the last one
    (`text`) taking the rest of the width and wrapping."""
    table = Table(
        title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False
    )
    for col in columns:
        table.add_column(col, no_wrap=True)
    table.add_column(text, overflow="fold", ratio=1)
    return table


def _window(w: Mapping[str, Any]) -> str:
    if not w.get("count"):
        return f"no requests in the last {w['span_s']:g} s"
    p50, p95, p99 = (f"{w[k]:.1f}" for k in ("p50_ms", "p95_ms", "p99_ms"))
    return f"p50 {p50} / p95 {p95} / p99 {p99} ms, {w['count']} requests in the last {w['span_s']:g} s"


def _configuration(st: Mapping[str, Any], now: float) -> Table:
    cfg = st["config"]
    rows: list[tuple[str, str | Text]] = [
        ("in force", f"{cfg['current']}, since {ago(cfg['since'], now)}"),
        ("why", cfg["reason"]),
    ]
    if pin := cfg.get("pinned"):
        left = pin.get("left_s", pin["until"] - now)  # the daemon's own count: no clock step between
        until = f"for {span(left)} more" if left > 0 else f"until {ago(pin['until'], now)}"
        rows.append(("pinned", f"{pin['config']} {until} ({pin['reason']})"))
    ctl = st.get("controller") or {}
    if ctl.get("predicted_ms") is not None:
        text = (
            f"predicts {_ms(ctl['predicted_ms'])}; slowdown x{ctl['slowdown']:.2f}, "
            f"overhead {ctl['overhead_ms']:.1f}, decode {ctl['decode_ms']:.1f} ms"
        )
        if ctl.get("feasible") is False:
            text += "; no allowed configuration meets the SLO"
        rows.append(("controller", text))
    if ctl.get("profile"):
        rows.append(("latency table", "the manifest's" if ctl["profile"] == "manifest" else ctl["profile"]))
    if acc := ctl.get("accuracy"):
        images = f", {acc['images']} images" if acc.get("images") else ""
        rows.append(("accuracy table", f"{acc['table']} ({acc['source']}{images})"))
        if acc.get("note"):
            rows.append(("", Text(acc["note"], style="yellow")))
    return _section("Configuration", rows)


def _slo(slo: Mapping[str, Any], window: Mapping[str, Any]) -> Table:
    p = f"p{slo['percentile']:g}"
    target = f"{p} <= {slo['latency_ms']:g} ms over {slo['window_s']:g} s"
    rows: list[tuple[str, str | Text]] = [
        ("target", f"{target}; the controller plans for {slo['headroom']:.0%} of it"),
    ]
    if slo.get("observed_ms") is None:
        rows.append(("observed", f"no requests in the last {slo['window_s']:g} s"))
    else:
        over = slo["observed_ms"] > slo["latency_ms"]
        rows.append(
            (
                "observed",
                Text(f"{p} {_ms(slo['observed_ms'])} over {slo['requests']} requests", style="red" if over else ""),
            )
        )
    if slo.get("attainment") is not None:
        rows.append(("attainment", f"{slo['attainment']:.1%} of requests within {slo['latency_ms']:g} ms"))
    rows.append(("active rules", ", ".join(slo.get("rules") or []) or "none"))
    rows.append(("latency", _window(window)))
    return _section("SLO", rows)


def _traffic(st: Mapping[str, Any]) -> Table:
    q = st["queue"]
    rows = [
        (
            "queue",
            f"{q['inflight']} in flight of {q['capacity']} "
            f"({q['workers']} workers, {q['ort_threads']} onnxruntime thread{'s' if q['ort_threads'] != 1 else ''} each)",
        ),
    ]
    if "decode" in st:
        rows.append(("decode", _window(st["decode"])))
    return _section("Requests", rows)


def _telemetry(tel: Mapping[str, Any], now: float) -> Table:
    cpu = _pct(tel.get("cpu_percent"))
    extras = []
    if tel.get("load_avg_1m") is not None:
        extras.append(f"load {tel['load_avg_1m']:.2f}")
    if tel.get("cpu_freq_mhz") is not None:
        extras.append(f"{tel['cpu_freq_mhz']:.0f} MHz")
    if extras:
        cpu += f" ({', '.join(extras)})"
    if tel.get("battery_percent") is not None:
        battery = f"{_pct(tel['battery_percent'])}, " + ("on AC" if tel.get("on_ac") else "on battery")
    else:
        battery = "on AC, no battery" if tel.get("on_ac") else "no battery reading"
    temp = tel.get("temperature_c")
    rows: list[tuple[str, str | Text]] = [
        ("cpu", cpu),
        ("temperature", "no sensor reading" if temp is None else f"{temp:.1f} C"),
        ("battery", battery),
        ("memory", _pct(tel.get("memory_percent"))),
    ]
    if tel.get("stale"):
        rows.append(("stale", Text(f"{', '.join(tel['stale'])} (last good value kept)", style="yellow")))
    return _section(f"Telemetry (read {ago(tel.get('time'), now)})", rows)


def _policy(pol: Mapping[str, Any], now: float, signatures: Mapping[str, Any] | None = None) -> Table:
    if pol.get("loaded_at") is None:
        source = "built-in default" + (f" (its file {pol['path']} could not be loaded)" if pol.get("path") else "")
        rows: list[tuple[str, str | Text]] = [("file", source)]
    else:
        rows = [
            ("file", pol["source"]),
            ("loaded", f"{ago(pol['loaded_at'], now)} (version {pol['version']}, digest {pol['digest']})"),
        ]
    rows.append(("rules", ", ".join(pol.get("rules") or []) or "none"))
    if signatures is not None:
        keys = ", ".join(k["id"] for k in signatures.get("keys") or [])
        rows.append(("signed", f"required, by key {keys}" if signatures.get("required") else "not required"))
    if pol.get("last_error"):
        refused = f"last edit refused ({pol['failures']} refused so far), the policy above stays in force:"
        rows.append(("error", Text(f"{refused}\n{pol['last_error']}", style="red")))
    return _section("Policy", rows)


def _variants(st: Mapping[str, Any]) -> Table:
    current = st["config"].get("variant")
    unavailable = st.get("unavailable_variants") or {}
    table = _listing(f"Variants (zoo {escape(str(st.get('zoo', '?')))})", ("variant", "input", "budgets"), "health")
    for name, v in st["variants"].items():
        if name in unavailable:
            u = unavailable[name]
            left = f" (cooldown: {span(u['cooldown_left_s'])} left)" if u.get("cooldown_left_s") else ""
            health = Text(f"{u['state'].replace('_', ' ')}: {u['reason']}{left}", style="red")
        else:
            health = Text("ok, in force" if name == current else "ok", style="green")
        budgets = " ".join(f"{b:g}" for b in v["budgets"])
        table.add_row(escape(name), f"{v['resolution']} px, {v['tokens']} tok", budgets, health)
    for name, why in (st.get("failed_variants") or {}).items():
        table.add_row(escape(name), "-", "-", Text(f"not loaded: {why}", style="red"))
    return table


def _decisions(decisions: list[Mapping[str, Any]], now: float, last: int = 5) -> Table:
    table = _listing("Recent switches", ("when", "from", "to"), "reason")
    for d in decisions[-last:]:
        table.add_row(ago(d["at"], now), d["old"], d["new"], escape(d["reason"]))
    return table


def render_status(st: Mapping[str, Any], now: float, socket: str) -> RenderableType:
    """The `GET /v1/status` answer as sections: configuration and why, SLO and attainment,
    requests, telemetry, policy, variants and their health, recent switches."""
    state = "draining" if st.get("draining") else "ready" if st.get("ready") else "not ready"
    where = f"on {socket}"
    if st.get("metrics_listen"):
        where += f"\nmetrics on http://{st['metrics_listen']}/metrics (read-only)"
    header = Text.assemble((f"edge-agent {st['version']}", "bold"), f": {state}, up {span(st['uptime_s'])}\n{where}")
    parts: list[RenderableType] = [header, _configuration(st, now)]
    if "slo" in st:
        parts.append(_slo(st["slo"], st["window"]))
    else:
        parts.append(_section("Latency", [("window", _window(st["window"]))]))
    parts.append(_traffic(st))
    if "telemetry" in st:
        parts.append(_telemetry(st["telemetry"], now))
    if "policy" in st:
        parts.append(_policy(st["policy"], now, st.get("signatures")))
    parts.append(_variants(st))
    if st.get("decisions"):
        parts.append(_decisions(st["decisions"], now))
    if (folder := st.get("state_dir")) and folder.get("problem"):
        parts.append(Text(f"state directory {folder['path']}: {folder['problem']} (serving goes on)", style="red"))
    if st.get("last_error"):
        parts.append(Text(f"last error: {st['last_error']}", style="red"))
    return Group(*_spaced(parts))


def _spaced(parts: list[RenderableType]) -> Iterable[RenderableType]:
    """A blank line between sections (a table's title is glued to what precedes it otherwise)."""
    for i, part in enumerate(parts):
        if i:
            yield Text("")
        yield part


def describe_reload(answer: Mapping[str, Any], now: float) -> tuple[bool, str, list[str]]:
    """(ok, one line, details) for a `POST /v1/policy/reload` answer: what is in force now and
    what else the reload did; the details are the refused file's or config's errors."""
    ok = bool(answer.get("reloaded", True))
    parts, details = [], []
    pol = answer.get("policy")
    if pol is not None:
        rules = ", ".join(pol.get("rules") or []) or "no rules"
        if pol.get("loaded_at") is None:
            in_force = "the built-in default policy"
        else:
            in_force = f"{pol['source']} (loaded {ago(pol['loaded_at'], now)}, digest {pol['digest']}; {rules})"
        if answer.get("error"):
            parts.append(f"policy refused, still in force: {in_force}")
            details.append(answer["error"])
        else:
            parts.append(f"policy reloaded: {in_force}")
    if answer.get("config_error"):
        parts.append("config refused")
        details.append(answer["config_error"])
    elif answer.get("config_changed"):
        live = [k for k in answer["config_changed"] if k not in answer.get("need_restart", [])]
        if live:
            parts.append(f"settings applied: {', '.join(live)}")
        if answer.get("need_restart"):
            parts.append(f"restart to apply: {', '.join(answer['need_restart'])}")
    if answer.get("out_of_service"):
        parts.append(f"out of service: {', '.join(answer['out_of_service'])}")
    if not parts:
        parts.append("reloaded" if ok else "reload failed")
    return ok, "; ".join(parts), details
