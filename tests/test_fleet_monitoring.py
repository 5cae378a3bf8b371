"""What a fleet's monitoring gets, checked with the tools it runs: the shipped alert rules pass
`promtool check rules` and their unit tests (`promtool test rules`), the example configuration
passes `promtool check config`, and a real Prometheus 2.x scrapes a real daemon's TCP metrics
listener, answers PromQL over an edge_agent_ series, evaluates every shipped rule without error
and every query of the Grafana dashboard. Names in the rules and the dashboard are checked
against what the daemon really exports."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon import DaemonProcess, eventually
from tests.test_metrics_listen import free_port

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
RULES = DEPLOY / "prometheus" / "edge-agent-rules.yml"
RULE_TESTS = DEPLOY / "prometheus" / "edge-agent-rules.test.yml"
EXAMPLE_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "edge-agent.json"
PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120, cwd=RULES.parent)


def alerts() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    return [t["expr"] for panel in json.loads(DASHBOARD.read_text())["panels"] for t in panel["targets"]]


# -- promtool --------------------------------------------------------------------------------------


@needs_promtool
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in result.stdout


@needs_promtool
def test_promtool_unit_tests_of_the_rules_pass() -> None:
    result = promtool("test", "rules", str(RULE_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


@needs_promtool
def test_the_example_prometheus_config_is_valid_and_loads_the_rules() -> None:
    result = promtool("check", "config", str(EXAMPLE_CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


def test_every_alert_has_a_unit_test_that_expects_it_to_fire() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert {rule["alert"] for rule in alerts()} == tested


def test_the_issue_s_alerts_are_shipped() -> None:
    """SLO attainment under target, policy reload failing, variant out of service, no decision."""
    exprs = {rule["alert"]: rule["expr"] for rule in alerts()}
    assert "edge_agent_slo_attainment" in exprs["EdgeAgentSloAttainmentLow"]
    assert "edge_agent_policy_refused" in exprs["EdgeAgentPolicyRefused"]
    assert 'state="out_of_service"' in exprs["EdgeAgentVariantOutOfService"]
    assert "edge_agent_controller_last_decision_timestamp_seconds" in exprs["EdgeAgentNoConfigDecision"]


def test_the_dashboard_has_the_panels_an_operator_looks_for() -> None:
    board = json.loads(DASHBOARD.read_text())
    titles = " | ".join(panel["title"] for panel in board["panels"]).lower()
    for topic in ("latency", "slo attainment", "configuration in force", "requests", "errors"):
        assert topic in titles, titles
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}


# -- a real daemon, scraped by a real Prometheus ----------------------------------------------------


class Scraped:
    def __init__(self, daemon: DaemonProcess, metrics_url: str, prometheus_url: str, log: Path) -> None:
        self.daemon, self.metrics_url, self.prometheus_url, self.log = daemon, metrics_url, prometheus_url, log

    def query(self, expr: str) -> dict[str, Any]:
        answer = httpx.get(f"{self.prometheus_url}/api/v1/query", params={"query": expr}, timeout=10)
        body: dict[str, Any] = answer.json()
        assert answer.status_code == 200 and body["status"] == "success", (expr, body)
        return body["data"]

    def values(self, expr: str) -> list[float]:
        return [float(r["value"][1]) for r in self.query(expr)["result"]]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    """The daemon with metrics_listen on a free local port, and Prometheus scraping it every
    second with the shipped rules loaded (evaluated every second too)."""
    if PROMETHEUS is None:
        pytest.skip("prometheus is not installed (Debian: prometheus)")
    work = tmp_path_factory.mktemp("fleet")
    port, web = free_port(), free_port()
    daemon = DaemonProcess(
        work / "daemon", env={"EDGE_AGENT_METRICS_LISTEN": f"127.0.0.1:{port}", "EDGE_AGENT_WARMUP_RUNS": "1"}
    )
    config = work / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [{"job_name": "edge-agent", "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}],
            }
        )
    )
    log = work / "prometheus.log"
    daemon.start()
    with daemon.client() as client:  # one answer and one error, so every labelled series has a child
        client.classify(REPO / "docs" / "samples" / "scratch_0.png")
        assert client.request("POST", "/v1/classify", b"not an image", "image/png")[0] == 400
    with log.open("wb") as out:
        prometheus = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{web}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    try:
        yield Scraped(daemon, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{web}", log)
    finally:
        prometheus.terminate()
        prometheus.wait(30)
        assert daemon.stop() == 0


def _scraped_once(s: Scraped) -> bool:
    try:
        return bool(s.values('edge_agent_ready{job="edge-agent"}'))
    except (httpx.HTTPError, AssertionError, ValueError):
        return False


@pytest.mark.daemon
def test_prometheus_scrapes_the_daemon_and_answers_promql(scraped: Scraped) -> None:
    started = time.monotonic()
    eventually(
        lambda: _scraped_once(scraped),
        60,
        "a scrape of edge_agent_ready",
        context=lambda: scraped.log.read_text()[-2000:],
    )
    print(f"first scrape answered {time.monotonic() - started:.1f} s after Prometheus started")
    with scraped.daemon.client() as client:
        status = client.status()
    assert scraped.values('up{job="edge-agent"}') == [1.0]
    assert scraped.values("edge_agent_ready") == [1.0]
    assert scraped.values("edge_agent_variants_loaded") == [float(len(status["variants"]))]
    [config] = scraped.query("edge_agent_config_info == 1")["result"]
    assert config["metric"]["instance"] == scraped.metrics_url.removeprefix("http://")
    assert config["metric"]["variant"] in status["variants"]


@pytest.mark.daemon
def test_prometheus_evaluates_every_shipped_rule_without_error(scraped: Scraped) -> None:
    eventually(lambda: _scraped_once(scraped), 60, "a scrape")

    def evaluated() -> list[dict[str, Any]] | None:
        groups = httpx.get(f"{scraped.prometheus_url}/api/v1/rules", timeout=10).json()["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        done = rules and all(not rule["lastEvaluation"].startswith("0001-") for rule in rules)
        return rules if done else None

    rules = eventually(evaluated, 30, "one evaluation of every rule")
    assert isinstance(rules, list)
    assert {r["name"] for r in rules} == {a["alert"] for a in alerts()}
    assert all(r["health"] == "ok" for r in rules), [(r["name"], r.get("lastError")) for r in rules]
    # A healthy idle daemon pages no one.
    firing = [r["name"] for r in rules if r["state"] != "inactive" and r["name"] != "EdgeAgentSloAttainmentLow"]
    assert firing == [], firing


@pytest.mark.daemon
def test_every_dashboard_query_runs_on_the_scraped_series(scraped: Scraped) -> None:
    eventually(lambda: _scraped_once(scraped), 60, "a scrape")
    for expr in dashboard_queries():
        concrete = expr.replace("$instance", ".*").replace("$__rate_interval", "1m")
        scraped.query(concrete)  # asserts the query parses and evaluates


@pytest.mark.daemon
def test_rules_and_dashboard_name_only_series_the_daemon_exports(scraped: Scraped) -> None:
    text = httpx.get(f"{scraped.metrics_url}/metrics", timeout=10).text
    exported = {s.name for family in text_string_to_metric_families(text) for s in family.samples}
    exported |= {family.name for family in text_string_to_metric_families(text)}
    used = set()
    for expr in [rule["expr"] for rule in alerts()] + dashboard_queries():
        used |= set(re.findall(r"\bedge_agent_[a-z0-9_]+", expr))
    assert used, "no edge_agent_ series named"
    assert used <= exported, sorted(used - exported)
