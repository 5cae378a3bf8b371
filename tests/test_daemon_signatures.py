"""Signed zoos and policies through the real daemon: with `trusted_keys` set, an unsigned zoo, a
manifest edited after signing, a policy signed by an untrusted key and a policy edited after
signing are refused at start with a one-line reason; a pair signed with the real `minisign` CLI
is served; a tampered policy on a live reload (admin route, SIGHUP, file watcher) is refused and
the last good one stays in force, with status and /metrics saying why."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.daemon import DaemonProcess, eventually

pytestmark = pytest.mark.daemon

MINISIGN = shutil.which("minisign")
NO_MINISIGN = "Debian's minisign is needed: the tests drive the tool operators use (.ci/run installs it)"


def policy_text(latency_ms: float) -> str:
    return f"version: 1\nslo: {{percentile: 95, latency_ms: {latency_ms}, window_s: 3}}\n"


def minisign(*args: str) -> None:
    assert MINISIGN is not None, NO_MINISIGN
    subprocess.run([MINISIGN, *args], check=True, capture_output=True, timeout=60)


def keypair(folder: Path, name: str) -> tuple[Path, Path]:
    """`minisign -G -W`: an unencrypted key pair, as an operator makes one for automation."""
    folder.mkdir(parents=True, exist_ok=True)
    pub, key = folder / f"{name}.pub", folder / f"{name}.key"
    minisign("-G", "-W", "-p", str(pub), "-s", str(key))
    return pub, key


def sign(path: Path, key: Path) -> None:
    minisign("-S", "-s", str(key), "-m", str(path))


def key_id(pub: Path) -> str:
    return pub.read_text().splitlines()[0].rsplit(" ", 1)[1]  # "untrusted comment: minisign public key ID"


class Setup:
    """A zoo copy and a policy, the operator's key pair and a stranger's."""

    def __init__(self, tmp_path: Path, zoo: Path) -> None:
        self.tmp = tmp_path
        self.zoo = zoo
        self.manifest = zoo / "manifest.json"
        self.policy = tmp_path / "policy.yaml"
        self.policy.write_text(policy_text(40))
        self.pub, self.key = keypair(tmp_path / "keys", "ops")
        self.rogue_pub, self.rogue_key = keypair(tmp_path / "keys", "rogue")

    def sign_all(self) -> None:
        sign(self.manifest, self.key)
        sign(self.policy, self.key)

    def daemon(self, name: str, env: dict[str, str] | None = None, flag: bool = True) -> DaemonProcess:
        """The daemon on this zoo and policy, trusting the operator's key (--trusted-key) unless
        `flag` is False (then `env` sets the setting)."""
        args = ["--zoo", str(self.zoo), "--policy", str(self.policy)]
        args += ["--trusted-key", str(self.pub)] if flag else []
        return DaemonProcess(self.tmp / name, env={"EDGE_AGENT_WARMUP_RUNS": "0", **(env or {})}, args=args)


@pytest.fixture
def setup(tmp_path: Path, zoo_copy: Path) -> Setup:
    return Setup(tmp_path, zoo_copy)


def refusal(d: DaemonProcess) -> str:
    """Start `d`, expecting it to refuse: its exit status must be non-zero, and the reason is the
    `start_failed` event's error, which must be one line; the same line goes to systemd's STATUS."""
    d.start(wait=False)
    assert d.proc is not None
    code = d.proc.wait(180)
    d.close()
    assert code != 0, d.log()
    events = [json.loads(line) for line in d.log().splitlines() if line.startswith("{")]
    [failed] = [e for e in events if e["event"] == "start_failed"]
    reason = str(failed["error"])
    assert "\n" not in reason and "Traceback" not in d.log()
    assert any(m == f"STATUS=failed: {reason}" for m in d.messages), d.messages
    assert not any("READY=1" in m for m in d.messages)
    return reason


def test_an_unsigned_zoo_is_refused(setup: Setup) -> None:
    sign(setup.policy, setup.key)
    assert refusal(setup.daemon("d")) == f"{setup.manifest}: no signature (manifest.json.minisig missing)"


def test_a_manifest_edited_after_signing_is_refused(setup: Setup) -> None:
    setup.sign_all()
    manifest = json.loads(setup.manifest.read_text())
    manifest["variants"][0]["description"] += " (edited)"
    setup.manifest.write_text(json.dumps(manifest, indent=2))
    assert refusal(setup.daemon("d")) == f"{setup.manifest}: signature does not match (edited after signing?)"


def test_a_policy_signed_by_an_untrusted_key_is_refused(setup: Setup) -> None:
    sign(setup.manifest, setup.key)
    sign(setup.policy, setup.rogue_key)
    expected = f"{setup.policy}: signature by untrusted key {key_id(setup.rogue_pub)} (trusted: {key_id(setup.pub)})"
    assert refusal(setup.daemon("d")) == expected


def test_a_policy_edited_after_signing_is_refused(setup: Setup) -> None:
    setup.sign_all()
    setup.policy.write_text(policy_text(400))
    assert refusal(setup.daemon("d")) == f"{setup.policy}: signature does not match (edited after signing?)"


def failures_metric(metrics: str, reason: str) -> float:
    prefix = f'edge_agent_policy_reload_failures_total{{reason="{reason}"}} '
    [line] = [line for line in metrics.splitlines() if line.startswith(prefix)]
    return float(line.split()[-1])


def test_a_pair_signed_with_minisign_is_served_and_a_tampered_reload_keeps_the_last_good(
    setup: Setup, sample_png: Path
) -> None:
    setup.sign_all()
    # The environment form of the setting (a JSON list), with two keys trusted.
    keys = json.dumps([str(setup.pub), str(setup.rogue_pub)])
    d = setup.daemon("d", {"EDGE_AGENT_POLICY_WATCH_S": "0.2", "EDGE_AGENT_TRUSTED_KEYS": keys}, flag=False)
    d.start()
    try:
        with d.client() as c:
            st = c.status()
            assert st["signatures"]["required"] is True
            assert sorted(k["id"] for k in st["signatures"]["keys"]) == sorted(
                [key_id(setup.pub), key_id(setup.rogue_pub)]
            )
            assert st["policy"]["source"] == str(setup.policy) and st["slo"]["latency_ms"] == 40
            assert c.classify(sample_png)["label"] == "scratch"
            assert "edge_agent_signatures_required 1.0" in c.metrics()
            digest = st["policy"]["digest"]

            # 1. An edit without a new signature, through the admin route.
            setup.policy.write_text(policy_text(30))
            answer = c.reload()
            reason = f"{setup.policy}: signature does not match (edited after signing?)"
            assert answer["reloaded"] is False and answer["error"] == reason
            st = c.status()
            assert st["policy"]["last_error"] == reason and st["last_error"] == reason
            assert st["policy"]["digest"] == digest and st["slo"]["latency_ms"] == 40
            metrics = c.metrics()
            assert failures_metric(metrics, "signature") >= 1 and failures_metric(metrics, "invalid") == 0
            assert c.classify(sample_png)["label"] == "scratch"  # still serving, on the last good policy

            # 2. The signature file removed, then SIGHUP.
            setup.policy.with_name("policy.yaml.minisig").unlink()
            before = failures_metric(c.metrics(), "signature")
            assert d.proc is not None
            d.proc.send_signal(signal.SIGHUP)
            missing = f"{setup.policy}: no signature (policy.yaml.minisig missing)"
            eventually(lambda: c.status()["policy"]["last_error"] == missing, 30, "SIGHUP reload refused")
            assert failures_metric(c.metrics(), "signature") > before
            assert c.status()["slo"]["latency_ms"] == 40

            # 3. Signed by the operator: the file watcher takes it (the new .minisig is a change).
            sign(setup.policy, setup.key)
            eventually(lambda: c.status()["slo"]["latency_ms"] == 30, 30, "signed edit taken by the watcher")
            assert c.status()["policy"]["last_error"] is None

            # 4. Tampered while the daemon watches: refused by the watcher, the signed one stays.
            before = failures_metric(c.metrics(), "signature")
            setup.policy.write_text(policy_text(20))
            eventually(lambda: failures_metric(c.metrics(), "signature") > before, 30, "watcher refused the edit")
            st = c.status()
            assert st["slo"]["latency_ms"] == 30 and st["policy"]["last_error"].endswith("(edited after signing?)")
            assert c.classify(sample_png)["label"] == "scratch"
    finally:
        assert d.stop() == 0
    assert "Traceback" not in d.log()


def test_without_trusted_keys_nothing_changes_and_status_says_signatures_are_off(
    tmp_path: Path, sample_png: Path
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(policy_text(40))  # unsigned, as every policy was before
    d = DaemonProcess(tmp_path / "d", args=["--policy", str(policy)], env={"EDGE_AGENT_WARMUP_RUNS": "0"}).start()
    try:
        with d.client() as c:
            st = c.status()
            assert st["signatures"] == {"required": False}
            assert st["policy"]["source"] == str(policy) and st["policy"]["last_error"] is None
            assert c.classify(sample_png)["label"] == "scratch"
            metrics = c.metrics()
            assert "edge_agent_signatures_required 0.0" in metrics
            assert failures_metric(metrics, "signature") == 0
    finally:
        assert d.stop() == 0
