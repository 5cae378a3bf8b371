"""docs/install.md followed step by step from a regular (non-editable) install, as on a gateway:
the package into a fresh venv, `edge-agent systemd install` with no --templates (everything the
service needs ships in the package), the units checked with systemd-analyze, the daemon started
as the unit's ExecStart= starts it, and `status` showing the installed policy in force. Also: the
daemon refuses a policy file that does not exist, and the shipped copies of the top-level
`policies/default.yaml` and `systemd/` stay equal to them.

How the install stays fast and offline: a wheel is built from a copy of the working tree with
`pip wheel --no-deps --no-build-isolation` (no index, this venv's setuptools; the copy keeps the
build's folders out of the checkout) and installed with `--no-deps` by this venv's pip
(`--python`) into a fresh venv made without pip. Its dependencies are not installed again: a
.pth file in the fresh venv names this venv's site-packages, which Python appends to sys.path
after the fresh venv's own, so `agent` and `model_zoo` come from the wheel (the tests check it)
and onnxruntime, numpy, ... from here. This venv's editable install stays invisible there: its
import hook is started by a .pth file, and only a site directory's own .pth files are run.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from agent.cli.systemd_units import CONFIG_FILE, POLICY_FILE, SERVICE, UNIT_FILES, unit_file
from agent.paths import POLICY_NAME, default_policy_path, shipped_dir
from agent.settings import Settings
from tests.sandbox import directives
from tests.test_systemd import Notifications, needs_analyze, one, seconds, security_exposure, verify_problems

REPO = Path(__file__).resolve().parent.parent
INSTALL_MD = REPO / "docs" / "install.md"
#: docs/install.md's venv; the tests put a fresh one in its place.
DOC_VENV = "/opt/edge-agent/venv"
#: What the build needs from the working tree (pyproject's packages, package data and readme).
SOURCES = ("pyproject.toml", "README.md", "agent", "model_zoo")


@dataclass(frozen=True)
class Installed:
    venv: Path
    site_packages: Path
    prefix: Path
    install_output: str

    def bin(self, name: str) -> Path:
        return self.venv / "bin" / name


def run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    """Run a step; its output is the failure message when it fails."""
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, timeout=120, cwd=cwd, env=env)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def doc_commands() -> list[list[str]]:
    """The `edge-agent` commands of install.md's steps 1 and 2 (install the package, the units),
    in the order the page gives them, without the `sudo VENV/bin/` in front."""
    steps = INSTALL_MD.read_text().split("\n## 3.")[0]
    lines = re.findall(rf"^sudo {re.escape(DOC_VENV)}/bin/edge-agent ([^#\n]*)", steps, flags=re.M)
    return [shlex.split(line) for line in lines]


def build_and_install(work: Path) -> tuple[Path, Path]:
    """Step 1 of install.md, offline: a wheel of the working tree into a fresh venv (module docstring)."""
    source = work / "src"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(REPO / name, source / name)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-w", work / "dist", source, cwd=work)
    [wheel] = (work / "dist").glob("edge_agent-*.whl")
    venv = work / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=work)
    run(*pip, "--python", venv / "bin" / "python", "install", "--no-deps", "--no-index", wheel, cwd=work)
    site = Path(
        run(
            venv / "bin" / "python", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=work
        ).strip()
    )
    (site / "dependencies-from-the-test-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return venv, site


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """install.md steps 1 and 2, run as written (below a temporary prefix) from a fresh venv."""
    work = tmp_path_factory.mktemp("gateway")
    venv, site = build_and_install(work)
    prefix = work / "root"
    outputs = []
    commands = doc_commands()
    # No --templates: the templates ship in the package.
    assert commands == [["zoo", "verify"], ["systemd", "install"]], commands
    for command in commands:
        if command[:2] == ["systemd", "install"]:
            command = [*command, "--prefix", str(prefix)]
        # Not the checkout: nothing may be found relative to it.
        outputs.append(run(venv / "bin" / "edge-agent", *command, cwd=work, env={**os.environ, "COLUMNS": "200"}))
    return Installed(venv, site, prefix, outputs[-1])


# -- step 1: the package, from a wheel -------------------------------------------------------------


@pytest.mark.daemon
def test_the_fresh_venv_runs_the_wheel_not_the_checkout(installed: Installed) -> None:
    code = "import agent, model_zoo, agent.paths as p; print(agent.__file__, model_zoo.__file__, p.shipped_dir())"
    found = run(installed.bin("python"), "-c", code, cwd=installed.prefix.parent).split()
    assert all(Path(path).is_relative_to(installed.site_packages) for path in found), found
    for relative in (Path("policies/default.yaml"), *(Path("systemd") / unit.template for unit in UNIT_FILES)):
        assert (Path(found[2]) / relative).is_file(), relative


def test_the_shipped_copies_equal_the_top_level_policy_and_templates() -> None:
    """A wheel carries only what is inside a package, so agent/shipped/ holds copies of
    policies/default.yaml and systemd/; an edit to either side must reach the other."""
    pairs = [(REPO / "policies" / "default.yaml", default_policy_path())]
    pairs += [(REPO / "systemd" / unit.template, shipped_dir() / "systemd" / unit.template) for unit in UNIT_FILES]
    differ = [f"cp {a.relative_to(REPO)} {b.relative_to(REPO)}" for a, b in pairs if a.read_bytes() != b.read_bytes()]
    assert not differ, "the shipped copy differs; copy the one you edited over the other: " + "; ".join(differ)
    assert sorted(p.name for p in (shipped_dir() / "systemd").iterdir()) == sorted(u.template for u in UNIT_FILES)


# -- step 2: the units, config and policy ------------------------------------------------------------


@pytest.mark.daemon
def test_install_from_the_wheel_writes_units_config_and_the_default_policy(installed: Installed) -> None:
    for path in [*(unit.target for unit in UNIT_FILES), CONFIG_FILE, POLICY_FILE]:
        assert f"wrote {installed.prefix / path}" in installed.install_output, installed.install_output
    assert (installed.prefix / POLICY_FILE).read_text() == default_policy_path().read_text()
    exec_start = shlex.split(one((installed.prefix / unit_file(SERVICE).target).read_text(), "ExecStart"))
    assert exec_start[0] == str(installed.bin("edge-agent"))


@pytest.mark.daemon
@needs_analyze
def test_units_installed_from_the_wheel_pass_verify_and_security(installed: Installed) -> None:
    status, problems = verify_problems(installed.prefix / "etc/systemd/system")
    assert status == 0 and problems == [], problems
    exposure, report = security_exposure(installed.prefix / unit_file(SERVICE).target)
    assert exposure <= 1.0, report


# -- the service as systemd would start it -------------------------------------------------------------


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="ea-") as name:
        yield Path(name)


@pytest.mark.daemon
def test_daemon_started_as_exec_start_runs_the_installed_policy(installed: Installed, short_dir: Path) -> None:
    service = (installed.prefix / unit_file(SERVICE).target).read_text()
    etc = installed.prefix / "etc"
    exec_start = shlex.split(one(service, "ExecStart").replace("%E", str(etc)))
    runtime, state, log = short_dir / "run", short_dir / "state", short_dir / "daemon.log"
    runtime.mkdir()
    # systemd's environment for the unit: its Environment= lines and the directories it creates,
    # nothing of ours (no EDGE_AGENT_*, no PYTHONPATH).
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(state),
        **dict(v.split("=", 1) for v in directives(service).get("Environment", [])),
        "RUNTIME_DIRECTORY": str(runtime),
        "STATE_DIRECTORY": str(state),
        "CONFIGURATION_DIRECTORY": str(etc / one(service, "ConfigurationDirectory")),
        "NOTIFY_SOCKET": str(short_dir / "notify"),
        "WATCHDOG_USEC": str(int(seconds(one(service, "WatchdogSec")) * 1_000_000)),
        "EDGE_AGENT_LOG_JSON": "true",
    }
    notify = Notifications(short_dir / "notify")
    with log.open("wb") as out:
        proc = subprocess.Popen(exec_start, cwd="/", env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        notify.expect("READY=1", proc, log)
        socket_path = runtime / "edge-agent.sock"
        answer = json.loads(
            run(installed.bin("edge-agent"), "status", "--socket", socket_path, "--json", cwd=short_dir)
        )
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.sock.close()
    shipped_rules = [rule["name"] for rule in yaml.safe_load(default_policy_path().read_text())["rules"]]
    policy = answer["policy"]
    assert policy["source"] == policy["path"] == str(installed.prefix / POLICY_FILE), policy
    assert policy["last_error"] is None and policy["rules"] == shipped_rules and shipped_rules, policy
    assert Path(answer["zoo"]).is_relative_to(installed.site_packages), answer["zoo"]


# -- a missing policy is an error ----------------------------------------------------------------------


@pytest.mark.daemon
@pytest.mark.parametrize("asked", ["--policy", "service"])
def test_daemon_refuses_to_start_on_a_policy_file_that_does_not_exist(
    asked: str, tmp_path: Path, short_dir: Path
) -> None:
    """Named with --policy, or the service's $CONFIGURATION_DIRECTORY/policy.yaml: exit status 2
    (which the unit does not retry), before the zoo is loaded, with the path and what to do."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGE_AGENT_", "NOTIFY_", "LISTEN_"))}
    env["EDGE_AGENT_LOG_JSON"] = "true"
    args = ["serve", "--socket", str(short_dir / "edge-agent.sock")]
    if asked == "--policy":
        missing = tmp_path / "missing.yaml"
        args += ["--policy", str(missing)]
    else:
        missing = tmp_path / "etc-edge-agent" / POLICY_NAME
        env["CONFIGURATION_DIRECTORY"] = str(missing.parent)
    result = subprocess.run(
        [sys.executable, "-m", "agent", *args], capture_output=True, text=True, timeout=120, cwd=REPO, env=env
    )
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    [event] = [json.loads(line) for line in output.splitlines() if '"policy_missing"' in line]
    assert event["path"] == str(missing)
    assert str(missing) in event["error"] and "No such file or directory" in event["error"]
    assert "edge-agent systemd install" in event["error"]
    assert "variant_loaded" not in output and not (short_dir / "edge-agent.sock").exists()


def test_policy_defaults_to_the_service_configuration_directory_under_systemd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("EDGE_AGENT_POLICY", raising=False)
    monkeypatch.delenv("CONFIGURATION_DIRECTORY", raising=False)
    assert Settings().policy == default_policy_path() and default_policy_path().is_file()
    monkeypatch.setenv("CONFIGURATION_DIRECTORY", str(tmp_path))
    assert Settings().policy == tmp_path / POLICY_NAME
    monkeypatch.setenv("EDGE_AGENT_POLICY", str(tmp_path / "mine.yaml"))
    assert Settings().policy == tmp_path / "mine.yaml"
