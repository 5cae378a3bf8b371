"""`edge-agent status` and `edge-agent policy reload` as an operator reads them, against the real
daemon (a subprocess on a temporary socket, its own copies of the zoo and the policy): the key
facts in words, times as ages, no JSON blobs or epoch numbers; `--json` for scripts.
The expected facts come from the daemon's own JSON answer, never from figures typed here."""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner, Result

from agent.cli.main import app
from agent.paths import default_policy_path
from tests.daemon import DaemonProcess

pytestmark = pytest.mark.daemon


class Served:
    def __init__(self, proc: DaemonProcess, zoo: Path, policy: Path) -> None:
        self.proc, self.zoo, self.policy = proc, zoo, policy

    def cli(self, *args: str) -> Result:
        return CliRunner().invoke(app, [*args, "--socket", str(self.proc.socket_path)])

    def status(self) -> dict:  # type: ignore[type-arg]
        with self.proc.client() as client:
            return client.status()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shipped_zoo: Path) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("status")
    zoo = work / "zoo"
    zoo.mkdir()
    for item in shipped_zoo.iterdir():
        if item.suffix in (".onnx", ".json"):
            shutil.copy2(item, zoo / item.name)
    policy = work / "policy.yaml"
    shutil.copy2(default_policy_path(), policy)
    proc = DaemonProcess(work / "daemon", args=["--zoo", str(zoo), "--policy", str(policy)])
    try:
        proc.start()
        yield Served(proc, zoo, policy)
        proc.stop()
    finally:
        proc.close()  # kills the daemon only where a failed start left it running


def _no_raw_data(text: str, status: dict) -> None:  # type: ignore[type-arg]
    """No JSON blob and no epoch timestamp (10 digits) anywhere; the policy digest is hex, not a time."""
    assert "{" not in text and "}" not in text, text
    without_digest = text.replace(status["policy"]["digest"] or "", "")
    assert not re.search(r"\d{9,}", without_digest), text
    assert str(int(status["config"]["since"])) not in text


def test_status_shows_configuration_slo_telemetry_policy_and_variants_in_words(
    served: Served, sample_png: Path
) -> None:
    before = served.status()
    other = next(name for name in before["variants"] if name != before["config"]["variant"])
    pinned = f"{other}@{min(before['variants'][other]['budgets']):g}"
    with served.proc.client() as client:
        for _ in range(5):
            client.classify(sample_png)
        client.pin(pinned, 600, "firmware update")
    try:
        result = served.cli("status")
        st = served.status()
    finally:
        with served.proc.client() as client:
            client.unpin()
    assert result.exit_code == 0, result.output
    out = result.output
    for section in ("Configuration", "SLO", "Requests", "Telemetry (read", "Policy", "Variants", "Recent switches"):
        assert section in out, section
    slo = st["slo"]
    assert f"in force        {pinned}, since" in out
    assert re.search(rf"{pinned} for (9 min \d+ s|10 min) more \(firmware update\)", out)  # time left, as an age
    assert f"p{slo['percentile']:g} <= {slo['latency_ms']:g} ms over {slo['window_s']:g} s" in out
    assert "% of requests within" in out and f"over {slo['requests']} requests" in out
    assert str(served.policy) in out and st["policy"]["digest"] in out
    assert all(rule in out for rule in st["policy"]["rules"])
    assert all(name in out for name in st["variants"]) and "ok, in force" in out
    assert re.search(r"since (\d+ s ago|just now)", out) and re.search(r"loaded +(\d+ s ago|just now)", out)
    assert str(served.proc.socket_path) in out.replace("\n", "") and "(--socket)" in out
    _no_raw_data(out, st)


def test_status_json_is_the_daemons_answer_and_documented(served: Served) -> None:
    result = served.cli("status", "--json")
    assert result.exit_code == 0
    answer = json.loads(result.stdout)
    assert answer.keys() == served.status().keys()
    assert answer["config"]["current"] == served.status()["config"]["current"]
    helped = CliRunner().invoke(app, ["status", "--help"], env={"COLUMNS": "200"})
    assert re.search(r"--json\s+.*GET /v1/status.*JSON", helped.stdout)


def test_policy_reload_says_in_one_line_what_is_in_force(served: Served) -> None:
    result = served.cli("policy", "reload")
    assert result.exit_code == 0, result.output
    policy = served.status()["policy"]
    [line] = result.stdout.splitlines()
    assert line.startswith(f"policy reloaded: {served.policy} (loaded ")
    assert policy["digest"] in line and all(rule in line for rule in policy["rules"])
    assert "{" not in line
    raw = served.cli("policy", "reload", "--json")
    assert raw.exit_code == 0 and json.loads(raw.stdout)["reloaded"] is True


def test_a_refused_policy_edit_says_what_stays_in_force_and_why(served: Served) -> None:
    good = served.policy.read_text()
    served.policy.write_text(good.replace("latency_ms: 25", "latency_ms: -5", 1))
    try:
        result = served.cli("policy", "reload")
        raw = served.cli("policy", "reload", "--json")
    finally:
        served.policy.write_text(good)
        assert served.cli("policy", "reload").exit_code == 0
    assert result.exit_code == 1
    assert result.stdout == ""  # the refusal and its errors go to stderr
    first, *details = result.stderr.splitlines()
    assert first.startswith(f"policy refused, still in force: {served.policy}")
    assert details and any("latency_ms" in d for d in details)
    answer = json.loads(raw.stdout)
    assert raw.exit_code == 1 and answer["reloaded"] is False and "latency_ms" in answer["error"]


def test_a_changed_model_file_shows_out_of_service_in_reload_and_status(served: Served) -> None:
    st = served.status()
    victim = next(n for n in reversed(list(st["variants"])) if n != st["config"]["variant"])
    path = served.zoo / f"{victim}.onnx"
    original = path.read_bytes()
    path.write_bytes(original + b"\0")
    try:
        result = served.cli("policy", "reload")
        status = served.cli("status")
    finally:
        path.write_bytes(original)
        assert served.cli("policy", "reload").exit_code == 0
    assert result.exit_code == 0, result.output
    assert f"out of service: {victim}" in result.stdout
    row = next(line for line in status.stdout.splitlines() if line.startswith(f"{victim} "))
    assert "out of service" in row
    _no_raw_data(status.stdout, served.status())
