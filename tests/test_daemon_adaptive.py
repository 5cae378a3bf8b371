"""The adaptive daemon end to end: policy reload (file change, SIGHUP, admin route), broken
edits refused with the last good policy kept, injected telemetry, and real CPU contention."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from agent.cli.scenario import injected_telemetry_env
from agent.client import ClientError
from agent.control.controller import Option, options_from_manifest, tiers
from agent.paths import default_zoo_dir
from agent.zoo.manifest import latency_table, load_manifest
from model_zoo import data
from tests.daemon import REPO, DaemonProcess, eventually

pytestmark = pytest.mark.daemon  # every test here talks to a daemon subprocess

BROKEN = sorted((REPO / "tests" / "policies_broken").iterdir())


def manifest_options(variants: set[str] | None = None) -> list[Option]:
    """The options the daemon's controller sees (shipped profile, 1 ORT thread, p95)."""
    manifest = load_manifest(default_zoo_dir() / "manifest.json")
    names = variants if variants is not None else {v.name for v in manifest.variants}
    return options_from_manifest(manifest, latency_table(manifest, None), names, 1, 95)


def most_accurate() -> str:
    """The configuration the controller picks when everything is feasible: the fastest of those
    the most accurate one ties with (its tier)."""
    options = manifest_options()
    tier = tiers(options)
    return str(min((o for o in options if tier[o.config] == 0), key=lambda o: o.profiled_ms).config)


def policy_text(latency_ms: float, extra: str = "") -> str:
    return (
        f"version: 1\nslo: {{percentile: 95, latency_ms: {latency_ms}, window_s: 3, headroom: 0.85}}\n"
        f"hysteresis: {{dwell_s: 2, min_switch_interval_s: 0.5}}\n{extra}"
    )


@pytest.fixture
def policy_daemon(tmp_path: Path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(40))
    override = tmp_path / "telemetry.json"
    d = DaemonProcess(
        tmp_path / "d",
        args=["--policy", str(policy)],
        env={**injected_telemetry_env(override, 0.2), "EDGE_AGENT_POLICY_WATCH_S": "0.2"},
    ).start()
    d.policy_path, d.override_path = policy, override  # type: ignore[attr-defined]
    yield d
    d.stop()


def slo_ms(d: DaemonProcess) -> float:
    with d.client() as c:
        return float(c.status()["slo"]["latency_ms"])


def test_policy_file_edit_is_live_within_2_s(policy_daemon: DaemonProcess) -> None:
    d = policy_daemon
    assert slo_ms(d) == 40
    d.policy_path.write_text(policy_text(33))  # type: ignore[attr-defined]
    eventually(lambda: slo_ms(d) == 33, 2.0, "status shows the edited SLO")


def test_sighup_and_admin_route_reload(policy_daemon: DaemonProcess) -> None:
    d = policy_daemon
    d.policy_path.write_text(policy_text(31))  # type: ignore[attr-defined]
    d.proc.send_signal(signal.SIGHUP)  # type: ignore[union-attr]
    eventually(lambda: slo_ms(d) == 31, 2.0, "SIGHUP reloads the policy")
    d.wait_for("RELOADING=1", 5)
    d.policy_path.write_text(policy_text(29))  # type: ignore[attr-defined]
    with d.client() as c:
        answer = c.reload()
    assert answer["reloaded"] is True
    assert slo_ms(d) == 29


def test_broken_edits_are_refused_and_the_last_good_policy_stays(policy_daemon: DaemonProcess) -> None:
    d = policy_daemon
    good = d.policy_path.read_text()  # type: ignore[attr-defined]
    png = data.write_samples(d.workdir / "img", "test", 1)[1]
    files = [*BROKEN, None]  # None: the file deleted
    assert len(BROKEN) >= 20
    with d.client() as c:
        digest = c.status()["policy"]["digest"]
        failures = c.status()["policy"]["failures"]
        for broken in files:
            if broken is None:
                d.policy_path.unlink()  # type: ignore[attr-defined]
            else:
                shutil.copyfile(broken, d.policy_path)  # type: ignore[attr-defined]
            answer = c.reload()
            assert answer["reloaded"] is False and answer["error"], (broken, answer)
            st = c.status()
            assert st["policy"]["digest"] == digest and st["slo"]["latency_ms"] == 40, broken
            assert st["policy"]["last_error"], broken
            assert c.classify(png)["label"] in data.CLASSES  # still serving
        st = c.status()
        assert st["policy"]["failures"] >= failures + len(files)
        assert st["last_error"]
        metrics = c.metrics()
    line = next(line for line in metrics.splitlines() if line.startswith("edge_agent_policy_reload_failures_total"))
    assert float(line.split()[-1]) >= len(files)
    d.policy_path.write_text(good)  # type: ignore[attr-defined]
    with d.client() as c:
        assert c.reload()["reloaded"] is True


def test_battery_rule_applies_from_injected_telemetry(tmp_path: Path) -> None:
    override = tmp_path / "telemetry.json"
    # The shipped default policy with a loose SLO, so that only the battery rule moves the choice.
    policy = tmp_path / "policy.yaml"
    default = (REPO / "policies" / "default.yaml").read_text()
    loose, edits = re.subn(r"^(\s*latency_ms:) \d+", r"\1 500", default, flags=re.M)
    assert edits == 1, "the default policy has one latency_ms"
    policy.write_text(loose)
    d = DaemonProcess(
        tmp_path / "d",
        args=["--policy", str(policy)],
        env=injected_telemetry_env(override, 0.2),
    ).start()
    try:
        with d.client() as c:
            best = most_accurate()
            eventually(
                lambda: c.status()["config"]["current"] == best,
                20,
                "the most accurate configuration (loose SLO, on AC)",
            )
            override.write_text(json.dumps({"battery_percent": 15, "on_ac": False}))

            def on_battery_config() -> bool:
                st = c.status()
                return (
                    "battery-low" in st["slo"]["rules"]
                    and st["config"]["variant"] in {"int8", "lowres", "int8-lowres"}
                    and st["config"]["budget"] <= 0.5
                )

            eventually(on_battery_config, 10, "battery rule restricts the configuration")
            st = c.status()
            assert st["telemetry"]["battery_percent"] == 15 and st["telemetry"]["on_ac"] is False
            assert "battery-low" in st["controller"]["last_reason"]
            metrics = c.metrics()
            assert 'edge_agent_telemetry{field="battery_percent"} 15.0' in metrics
            assert (
                f'edge_agent_config_info{{budget="{st["config"]["budget"]:g}",variant="{st["config"]["variant"]}"}} 1.0'
                in metrics
            )
            override.write_text(json.dumps({"battery_percent": 90, "on_ac": True}))
            eventually(
                lambda: c.status()["config"]["current"] == best and not c.status()["slo"]["rules"],
                20,
                "back on AC: the most accurate again after the dwell",
            )
    finally:
        d.stop()


def _burn(stop: multiprocessing.synchronize.Event) -> None:  # type: ignore[name-defined]
    x = 0
    while not stop.is_set():
        for _ in range(10_000):
            x = (x * 1103515245 + 12345) & 0xFFFFFFFF


def test_real_contention_steps_down_and_back_up(tmp_path: Path) -> None:
    """SLO between the cheapest and the most accurate configuration's latency: burning every
    core makes the daemon step down until p95 is back under the SLO; stopping the burners
    lets it step back up after the dwell."""

    # Two configurations with a real accuracy gap (the test split is saturated across budgets, so
    # budgets of one variant tie): full@1 meets the SLO idle (profiled p95 x 2.2), not with every core busy.
    # Stepping back up predicts full@1 from lowres@1's observed/profiled ratio, which the daemon's
    # fixed per-request cost inflates for so small a model: at x 1.8 the idle ratio had to stay
    # under 1.53, and a clean-clone CI run sat just above it for the whole minute.
    options = {str(o.config): o for o in manifest_options({"full", "lowres"})}
    assert options["full@1"].accuracy > options["lowres@1"].accuracy
    slo = round(options["full@1"].profiled_ms * 2.2, 1)
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(slo, "allowed: {variants: [full, lowres], budgets: [1.0]}\n"))
    best_name = "full@1"
    d = DaemonProcess(tmp_path / "d", args=["--policy", str(policy)]).start()
    image = data.sample(0, "test", 1).image.transpose(2, 0, 1).astype("float32") / 255
    stop_client = threading.Event()
    answers: list[tuple[float, float, str]] = []

    def client_loop() -> None:
        with d.client() as c:
            while not stop_client.is_set():
                t = time.monotonic()
                try:
                    a = c.classify(image)
                    answers.append((t, (time.monotonic() - t) * 1000, f"{a['variant']}@{a['budget']:g}"))
                except ClientError:
                    answers.append((t, float("inf"), "refused"))
                time.sleep(0.02)

    client = threading.Thread(target=client_loop)
    client.start()
    stop_burn = multiprocessing.Event()
    burners: list[multiprocessing.Process] = []
    try:
        with d.client() as c:
            eventually(
                lambda: c.status()["config"]["current"] == best_name, 20, f"{best_name} (the most accurate) while idle"
            )
            burners = [
                multiprocessing.Process(target=_burn, args=(stop_burn,)) for _ in range(2 * (os.cpu_count() or 1))
            ]
            for b in burners:
                b.start()
            eventually(lambda: c.status()["config"]["current"] != best_name, 30, "step down under contention")
            down = c.status()["config"]

            def recovered() -> bool:
                w = c.status()["slo"]
                return w["observed_ms"] is not None and w["observed_ms"] <= slo and w["requests"] >= 20

            eventually(recovered, 40, "p95 back under the SLO under contention")
            stop_burn.set()
            for b in burners:
                b.join(10)
            eventually(
                lambda: c.status()["config"]["current"] == best_name,
                60,
                "step back up once idle",
                context=lambda: {k: v for k, v in c.status().items() if k == "slo" or k == "decisions"},
            )
            st = c.status()
        assert "step down" in down["reason"]
        assert any("step up" in dec["reason"] for dec in st["decisions"])
    finally:
        stop_burn.set()
        for b in burners:
            b.join(10)
        stop_client.set()
        client.join(30)
        d.stop()


def site_table(path: Path, accuracy: dict[str, float], images: int = 400) -> None:
    """A site table as `zoo eval --data DIR --save` writes it, with the given figures."""
    from agent.zoo.accuracy_tables import SitePoint, site_table_file

    manifest = load_manifest(default_zoo_dir() / "manifest.json")
    points = [
        SitePoint(
            variant=name.split("@")[0],
            sha256=manifest.variant(name.split("@")[0]).sha256,
            budget=float(name.split("@")[1]),
            correct=round(acc * images),
            images=images,
        )
        for name, acc in accuracy.items()
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(site_table_file("/site/images", list(manifest.classes), points))
    tmp.replace(path)


def test_a_site_table_that_reverses_two_configurations_changes_the_choice_live(tmp_path: Path) -> None:
    """Policy `accuracy: site`, full@1 and lowres@1 allowed, an SLO both meet. The site table
    says lowres@1 is the more accurate on this line's images (by more than the interval): the
    daemon serves lowres@1, whatever the test split says. The table is measured again and now
    says the reverse: the running daemon moves to full@1, no restart, no reload."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        policy_text(1000, "accuracy: site\nallowed: {variants: [full, lowres], budgets: [1.0]}\n").replace(
            "dwell_s: 2", "dwell_s: 0.5"
        )
    )
    d = DaemonProcess(tmp_path / "d", args=["--policy", str(policy)], env={"EDGE_AGENT_POLICY_WATCH_S": "0.2"})
    table = d.workdir / "state" / "site-accuracy.json"
    site_table(table, {"full@1": 0.70, "lowres@1": 0.95})
    d.start()
    try:
        with d.client() as c:
            eventually(lambda: c.status()["config"]["current"] == "lowres@1", 10, "lowres@1, first on the site table")
            st = c.status()
            assert st["controller"]["accuracy"]["table"] == "site" and st["controller"]["accuracy"]["images"] == 400
            assert "site accuracy 95.0%" in st["controller"]["last_reason"]
            assert 'edge_agent_accuracy_table{edge_agent_accuracy_table="site"} 1.0' in c.metrics()
            pid = d.proc.pid  # type: ignore[union-attr]
            site_table(table, {"full@1": 0.96, "lowres@1": 0.80})
            eventually(lambda: c.status()["config"]["current"] == "full@1", 10, "full@1 once the table is reversed")
            assert "site accuracy 96.0%" in c.status()["controller"]["last_reason"]
            assert d.proc.pid == pid and d.proc.poll() is None  # type: ignore[union-attr]
            table.unlink()  # gone: the zoo's test table, and status says why
            eventually(lambda: c.status()["controller"]["accuracy"]["table"] == "test", 5, "back on the test table")
            assert "no site accuracy table" in c.status()["controller"]["accuracy"]["note"]
    finally:
        d.stop()
