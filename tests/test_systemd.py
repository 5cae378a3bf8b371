"""The systemd units as `edge-agent systemd install` writes them: they pass `systemd-analyze
verify`, score at most 1.0 on `systemd-analyze security`, and the daemon runs under the unit's
own syscall filter, MemoryDenyWriteExecute= and AF_UNIX-only sockets (seccomp, as systemd
applies them), both binding its socket and socket-activated, with the sd_notify protocol.

The sandbox itself (seccomp filter, child process) is in `tests/sandbox.py`."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from agent.cli.systemd_units import (
    CONFIG_FILE,
    METRICS_SOCKET,
    POLICY_FILE,
    SERVICE,
    SOCKET,
    SYSUSERS,
    UNIT_FILES,
    UNIT_SOCKET_PATH,
    enable_links,
    entry_point,
    exec_word,
    hidden_by_sandbox,
    unit_file,
)
from agent.paths import POLICY_NAME, SOCKET_NAME, default_policy_path, unit_templates_dir
from tests.sandbox import ANALYZE, LIBSECCOMP, directives, sandbox_spec

REPO = Path(__file__).resolve().parent.parent
needs_analyze = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed")
UNITS = (SERVICE, SOCKET, METRICS_SOCKET)


# -- reading unit files -----------------------------------------------------------------------


def one(text: str, key: str) -> str:
    values = directives(text)[key]
    assert len(values) == 1, f"{key}= appears {len(values)} times"
    return values[0]


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|h)?", value)
    assert match, f"unexpected time span {value!r}"
    return float(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "h": 3600}[match.group(2)]


# -- fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def entry() -> Path:
    """The installed `edge-agent` entry point of this venv, which ExecStart= must name."""
    path = entry_point(sys.executable)
    if not path.exists():
        found = shutil.which("edge-agent")
        assert found, "no edge-agent entry point: pip install -e . into this venv"
        path = Path(found)
    return path


def run_cli(entry: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(entry), *args],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200", "ORT_DISABLE_TELEMETRY": "1"},
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def prefix(tmp_path_factory: pytest.TempPathFactory, entry: Path) -> Path:
    """A root with everything `edge-agent systemd install --prefix ... --enable` wrote."""
    root = tmp_path_factory.mktemp("root")
    result = run_cli(entry, "systemd", "install", "--prefix", str(root), "--enable")
    assert result.returncode == 0, result.stdout + result.stderr
    return root


@pytest.fixture(scope="module")
def service_text(prefix: Path) -> str:
    return (prefix / unit_file(SERVICE).target).read_text()


@pytest.fixture(scope="module")
def socket_text(prefix: Path) -> str:
    return (prefix / unit_file(SOCKET).target).read_text()


# -- the installer ----------------------------------------------------------------------------------


@pytest.mark.daemon
def test_install_writes_units_whose_exec_start_is_this_venvs_entry_point(
    prefix: Path, entry: Path, service_text: str
) -> None:
    for name in (SERVICE, SOCKET, SYSUSERS):
        assert (prefix / unit_file(name).target).is_file(), name
    assert (prefix / CONFIG_FILE).is_file()
    assert (prefix / POLICY_FILE).read_text() == default_policy_path().read_text()
    command = shlex.split(one(service_text, "ExecStart"))
    assert command[0] == str(entry)
    assert command[1:] == ["serve", "--config", "%E/edge-agent/config.yaml"]
    assert "@EXEC@" not in service_text
    assert (prefix / unit_file(SOCKET).target).read_text() == (REPO / "systemd" / SOCKET).read_text()


@pytest.mark.daemon
def test_install_with_enable_links_the_units_like_systemctl_enable(prefix: Path) -> None:
    wants = prefix / "etc/systemd/system"
    assert os.readlink(wants / "multi-user.target.wants" / SERVICE) == f"/etc/systemd/system/{SERVICE}"
    assert os.readlink(wants / "sockets.target.wants" / SOCKET) == f"/etc/systemd/system/{SOCKET}"
    # The metrics listener is installed but left for the operator to enable (opt-in).
    assert (prefix / unit_file(METRICS_SOCKET).target).is_file()
    assert not (wants / "sockets.target.wants" / METRICS_SOCKET).exists()


@pytest.mark.daemon
def test_install_never_overwrites_an_edited_config_or_policy(tmp_path: Path, entry: Path) -> None:
    edited = {tmp_path / CONFIG_FILE: "log_level: debug\n", tmp_path / POLICY_FILE: "version: 1\n# mine\n"}
    for path, text in edited.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    result = run_cli(entry, "systemd", "install", "--prefix", str(tmp_path))
    assert result.returncode == 0, result.stdout + result.stderr
    for path, text in edited.items():
        assert path.read_text() == text
        assert f"kept {path} (edited; never overwritten)" in result.stdout
    assert "no systemd-sysusers or systemctl was run" in result.stdout
    assert not (tmp_path / "etc/systemd/system/multi-user.target.wants").exists()


@pytest.mark.daemon
def test_a_rerun_that_changes_nothing_says_unchanged_for_every_file(tmp_path: Path, entry: Path) -> None:
    first = run_cli(entry, "systemd", "install", "--prefix", str(tmp_path), "--enable")
    assert first.returncode == 0, first.stdout + first.stderr
    again = run_cli(entry, "systemd", "install", "--prefix", str(tmp_path), "--enable")
    assert again.returncode == 0, again.stdout + again.stderr
    verbs = ("wrote ", "updated ", "unchanged ", "kept ", "linked ")
    written = [line for line in first.stdout.splitlines() if line.startswith(("wrote ", "linked "))]
    reported = [line for line in again.stdout.splitlines() if line.startswith(verbs)]
    assert len(written) == len(UNIT_FILES) + 2 + len(enable_links()), first.stdout  # + config, policy
    assert len(reported) == len(written) and all(line.startswith("unchanged ") for line in reported), again.stdout
    # A template that changed is reported as such.
    service = tmp_path / unit_file(SERVICE).target
    service.write_text(service.read_text() + "# drift\n")
    third = run_cli(entry, "systemd", "install", "--prefix", str(tmp_path))
    assert f"updated {service}" in third.stdout, third.stdout


def test_sysusers_comment_names_the_path_install_writes_it_to() -> None:
    template = (unit_templates_dir() / SYSUSERS).read_text()
    comments = "\n".join(line for line in template.splitlines() if line.startswith("#"))
    assert f"writes it to /{unit_file(SYSUSERS).target}" in comments, comments
    assert "Installed to /usr/lib/sysusers.d" not in comments


@pytest.mark.daemon
def test_render_prints_the_installed_service(prefix: Path, entry: Path, service_text: str) -> None:
    result = run_cli(entry, "systemd", "render")
    assert result.returncode == 0, result.stderr
    assert result.stdout == service_text


@pytest.mark.daemon
def test_default_config_runs_on_defaults_and_each_line_uncomments_to_a_valid_setting(
    prefix: Path, tmp_path: Path
) -> None:
    from agent.settings import Settings, load_settings

    config = prefix / CONFIG_FILE
    assert load_settings(config) == load_settings(None)
    uncommented = tmp_path / "all.yaml"
    lines = [line[1:] for line in config.read_text().splitlines() if re.match(r"#[a-z_]+: ", line)]
    assert {line.split(":")[0] for line in lines} == set(Settings.model_fields)
    uncommented.write_text("\n".join(lines) + "\n")
    explicit = load_settings(uncommented)
    assert explicit.socket == Path(UNIT_SOCKET_PATH)
    assert explicit.socket_mode == 0o660
    assert explicit.drain_timeout_s == Settings.model_fields["drain_timeout_s"].default


def test_exec_word_escapes_specifiers_and_quotes_blanks() -> None:
    assert exec_word(Path("/opt/edge-agent/venv/bin/edge-agent")) == "/opt/edge-agent/venv/bin/edge-agent"
    assert exec_word(Path("/opt/100%/$HOME/edge-agent")) == "/opt/100%%/$$HOME/edge-agent"
    assert exec_word(Path("/opt/my venv/bin/edge-agent")) == '"/opt/my venv/bin/edge-agent"'


def test_a_venv_the_sandbox_hides_is_named_with_the_option_that_hides_it() -> None:
    assert hidden_by_sandbox(Path("/home/pi/venv/bin/edge-agent")) == "ProtectHome=yes hides /home"
    assert hidden_by_sandbox(Path("/tmp/venv/bin/edge-agent")) == "PrivateTmp=yes hides /tmp"
    assert hidden_by_sandbox(Path("/opt/edge-agent/venv/bin/edge-agent")) is None
    assert hidden_by_sandbox(Path("/homestead/edge-agent")) is None


# -- what the units promise each other and the daemon ------------------------------------------------


@pytest.mark.daemon
def test_socket_unit_listens_where_the_service_would_bind(service_text: str, socket_text: str) -> None:
    assert one(socket_text, "ListenStream") == str(UNIT_SOCKET_PATH)
    assert Path("/run") / one(service_text, "RuntimeDirectory") / SOCKET_NAME == UNIT_SOCKET_PATH
    assert one(socket_text, "Service") == SERVICE
    assert (one(socket_text, "SocketMode"), one(socket_text, "SocketUser"), one(socket_text, "SocketGroup")) == (
        "0660",
        "edge-agent",
        "edge-agent",
    )
    # Stopping the service must not delete the directory that holds the socket unit's socket.
    assert one(service_text, "RuntimeDirectoryPreserve") == "yes"


@pytest.mark.daemon
def test_service_waits_for_ready_and_outlasts_the_drain(service_text: str) -> None:
    from agent.settings import Settings

    assert (one(service_text, "Type"), one(service_text, "NotifyAccess")) == ("notify", "main")
    drain = Settings.model_fields["drain_timeout_s"].default
    assert seconds(one(service_text, "TimeoutStopSec")) >= drain + 10
    assert seconds(one(service_text, "WatchdogSec")) >= 10
    assert one(service_text, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert one(service_text, "User") == one(service_text, "Group") == "edge-agent"
    # The daemon reads /proc/stat, /proc/loadavg and /sys (thermal, power supply) for telemetry.
    assert "ProcSubset" not in directives(service_text)
    assert not any("/sys" in v or "/proc" in v for v in directives(service_text).get("InaccessiblePaths", []))


@pytest.mark.daemon
@pytest.mark.skipif(shutil.which("systemd-sysusers") is None, reason="systemd-sysusers is not installed")
def test_sysusers_file_creates_the_edge_agent_user_and_group(prefix: Path, tmp_path: Path) -> None:
    conf = tmp_path / "etc/sysusers.d/edge-agent.conf"
    conf.parent.mkdir(parents=True)
    shutil.copy(prefix / unit_file(SYSUSERS).target, conf)
    result = subprocess.run(["systemd-sysusers", f"--root={tmp_path}"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    user = next(
        line.split(":") for line in (tmp_path / "etc/passwd").read_text().splitlines() if line.startswith("edge-agent:")
    )
    group = next(
        line.split(":") for line in (tmp_path / "etc/group").read_text().splitlines() if line.startswith("edge-agent:")
    )
    assert user[3] == group[2], "the user's primary group is group edge-agent"
    assert user[5] == "/var/lib/edge-agent" and user[6].endswith("nologin")


# -- systemd-analyze ---------------------------------------------------------------------------


def verify_problems(unit_dir: Path) -> tuple[int, list[str]]:
    """Exit status and every line of `systemd-analyze verify` that concerns our units. verify
    exits 0 on an unknown or misspelled directive (it only warns), so the lines are what count;
    lines about the host's own units or configuration are not ours to fix and are left out."""
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "verify", "--man=no", *(str(unit_dir / name) for name in UNITS)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    ours = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if str(unit_dir) in line or any(name in line for name in UNITS)
    ]
    return result.returncode, ours


@pytest.mark.daemon
@needs_analyze
def test_units_pass_systemd_analyze_verify(prefix: Path) -> None:
    status, problems = verify_problems(prefix / "etc/systemd/system")
    assert status == 0 and problems == [], problems


@pytest.mark.daemon
@needs_analyze
def test_verify_check_catches_a_misspelled_directive(service_text: str, socket_text: str, tmp_path: Path) -> None:
    (tmp_path / SERVICE).write_text(service_text.replace("WatchdogSec=", "WatchdogSecs="))
    (tmp_path / SOCKET).write_text(socket_text)
    status, problems = verify_problems(tmp_path)
    assert any("WatchdogSecs" in line for line in problems), (status, problems)


def security_exposure(service: Path | str, root: Path | None = None) -> tuple[float, str]:
    """`systemd-analyze security --offline=true` of an installed service file (or, with `root`,
    of the unit by name as systemd would load it below that root, drop-ins and sockets included):
    the overall exposure (0 best, 10 worst) and the full report, to show when it is too high."""
    assert ANALYZE is not None
    where = [f"--root={root}"] if root is not None else []
    result = subprocess.run(
        [ANALYZE, "security", "--offline=true", *where, str(service)], capture_output=True, text=True, timeout=120
    )
    match = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", result.stdout)
    assert match, result.stdout + result.stderr
    return float(match.group(1)), result.stdout


@pytest.mark.daemon
@needs_analyze
def test_service_exposure_is_at_most_1(prefix: Path) -> None:
    exposure, report = security_exposure(prefix / unit_file(SERVICE).target)
    print(f"systemd-analyze security: overall exposure {exposure}")
    assert exposure <= 1.0, report


@pytest.mark.daemon
@needs_analyze
def test_service_exposure_stays_at_most_1_with_the_metrics_listener_enabled(prefix: Path, tmp_path: Path) -> None:
    """The TCP listener is edge-agent-metrics.socket: systemd makes the socket and filters who may
    connect, the service inherits it and keeps its sandbox (no network of its own) untouched."""
    root = tmp_path / "root"
    shutil.copytree(prefix, root, symlinks=True)
    for link, target in enable_links((replace(unit_file(METRICS_SOCKET), opt_in=False),)):  # systemctl enable
        (root / link).parent.mkdir(parents=True, exist_ok=True)
        (root / link).symlink_to(target)
    exposure, report = security_exposure(SERVICE, root=root)
    print(f"systemd-analyze security with {METRICS_SOCKET} enabled: overall exposure {exposure}")
    assert exposure <= 1.0, report
    service, metrics = (
        directives((root / unit_file(SERVICE).target).read_text()),
        directives((root / unit_file(METRICS_SOCKET).target).read_text()),
    )
    assert (service["PrivateNetwork"], service["RestrictAddressFamilies"], service["IPAddressDeny"]) == (
        ["yes"],
        ["AF_UNIX"],
        ["any"],
    )
    assert metrics["Service"] == [SERVICE] and metrics["Accept"] == ["no"]
    assert metrics["IPAddressDeny"] == ["any"] and metrics["IPAddressAllow"] == ["localhost"]
    [listen] = metrics["ListenStream"]
    assert listen.isdigit()  # a port: both IPv4 and IPv6, which the daemon serves as one socket


@pytest.mark.daemon
@needs_analyze
def test_giving_the_service_network_itself_would_cost_more_than_1(prefix: Path, tmp_path: Path) -> None:
    """Why the listener is a socket unit: the drop-in that would let the service bind TCP itself
    (network namespace off, IP families allowed, only localhost let in) already scores above 1.0."""
    root = tmp_path / "root"
    shutil.copytree(prefix, root, symlinks=True)
    drop_in = root / unit_file(SERVICE).target.parent / f"{SERVICE}.d" / "network.conf"
    drop_in.parent.mkdir(parents=True)
    drop_in.write_text(
        "[Service]\nPrivateNetwork=no\nRestrictAddressFamilies=AF_INET AF_INET6\nIPAddressAllow=localhost\n"
    )
    exposure, report = security_exposure(SERVICE, root=root)
    assert exposure > 1.0, report


# -- the daemon under the unit's seccomp sandbox ---------------------------------------------------


@pytest.fixture
def tiny_zoo(tmp_path: Path) -> Path:
    """A one-variant zoo (8x8 image -> 2 classes): the sandbox test needs onnxruntime to
    load and run a model, not the shipped zoo."""
    import hashlib

    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    weights = helper.make_tensor("w", TensorProto.FLOAT, [3, 2], [1.0, -1.0, 0.5, -0.5, 0.25, -0.25])
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2])],
        [weights],
    )
    zoo = tmp_path / "zoo"
    zoo.mkdir()
    model = zoo / "tiny.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    variant = {
        "name": "tiny",
        "file": "tiny.onnx",
        "sha256": hashlib.sha256(model.read_bytes()).hexdigest(),
        "resolution": 8,
        "tokens": 0,
        "token_input": None,
        "parameters": 6,
        "size_bytes": model.stat().st_size,
        "inputs": [{"name": "image", "dtype": "tensor(float)", "shape": ["N", 3, 8, 8]}],
        "outputs": [{"name": "logits", "dtype": "tensor(float)", "shape": ["N", 2]}],
    }
    (zoo / "manifest.json").write_text(json.dumps({"name": "tiny", "classes": ["a", "b"], "variants": [variant]}))
    return zoo


class Notifications:
    """The $NOTIFY_SOCKET end: the sd_notify messages the daemon sends, in order."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.seen: list[str] = []

    def expect(self, line: str, proc: subprocess.Popen[bytes], log: Path, timeout: float = 120) -> None:
        """Wait until a message containing `line` arrives; fail early if the daemon died."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.settimeout(0.5)
            try:
                message = self.sock.recv(4096).decode().splitlines()
            except TimeoutError:
                if proc.poll() is not None:
                    pytest.fail(
                        f"daemon exited {proc.returncode} before {line}: {self.seen}\n{log.read_text()[-3000:]}"
                    )
                continue
            self.seen.extend(message)
            if line in message:
                return
        pytest.fail(f"no {line} within {timeout} s: {self.seen}\n{log.read_text()[-3000:]}")


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """Socket paths must stay under 108 bytes; pytest's tmp_path can be longer."""
    with tempfile.TemporaryDirectory(prefix="ea-") as name:
        yield Path(name)


@pytest.mark.daemon
@pytest.mark.skipif(ANALYZE is None or LIBSECCOMP is None, reason="needs systemd-analyze and libseccomp")
@pytest.mark.parametrize("activation", ["bound", "socket", "socket+metrics"])
def test_daemon_serves_under_the_units_seccomp_sandbox(
    activation: str, prefix: Path, service_text: str, tiny_zoo: Path, short_dir: Path, tmp_path: Path
) -> None:
    import numpy as np

    from agent.client import Client

    spec = tmp_path / "sandbox.json"
    spec.write_text(json.dumps(sandbox_spec(service_text)))
    runtime, log = short_dir / "run", tmp_path / "daemon.log"
    runtime.mkdir()
    # The service's policy ($CONFIGURATION_DIRECTORY/policy.yaml), here one for the tiny zoo:
    # the shipped default names variants that zoo lacks.
    config_dir = tmp_path / "etc-edge-agent"
    config_dir.mkdir()
    (config_dir / POLICY_NAME).write_text("version: 1\nslo:\n  latency_ms: 1000\n")
    sock_path = runtime / SOCKET_NAME
    notify = Notifications(short_dir / "notify")
    exec_start = shlex.split(one(service_text, "ExecStart").replace("%E", str(prefix / "etc")))
    unit_env = dict(v.split("=", 1) for v in directives(service_text).get("Environment", []))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_", "EDGE_AGENT_"))}
    env.update(
        unit_env,
        RUNTIME_DIRECTORY=str(runtime),
        STATE_DIRECTORY=str(tmp_path / "state"),
        CONFIGURATION_DIRECTORY=str(config_dir),
        NOTIFY_SOCKET=str(short_dir / "notify"),
        WATCHDOG_USEC="1000000",
        EDGE_AGENT_ZOO=str(tiny_zoo),
        EDGE_AGENT_WARMUP_RUNS="1",
        EDGE_AGENT_WORKERS="1",
        EDGE_AGENT_ORT_THREADS="1",
    )
    pass_fds: tuple[int, ...] = ()
    listener = metrics = None
    if activation.startswith("socket"):  # what edge-agent.socket does: systemd binds, the daemon inherits fd 3
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(str(sock_path))
        listener.listen(16)
        pass_fds = (listener.fileno(),)
    if activation == "socket+metrics":  # ... and edge-agent-metrics.socket: a TCP socket as fd 4
        metrics = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        metrics.bind(("127.0.0.1", 0))
        metrics.listen(16)
        pass_fds += (metrics.fileno(),)
    if pass_fds:
        env["EDGE_TEST_LISTEN_FD"] = ",".join(map(str, pass_fds))
    child = "import sys; from tests.sandbox import sandbox_exec; sandbox_exec(sys.argv[1:])"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-c", child, str(spec), "--", *exec_start],
            cwd=REPO,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=pass_fds,
        )
    try:
        notify.expect("READY=1", proc, log)
        with Client(sock_path) as client:
            answer = client.classify(np.full((3, 8, 8), 0.5, dtype=np.float32))
        assert answer["label"] in ("a", "b") and answer["variant"] == "tiny"
        with Client(sock_path) as client:
            policy = client.status()["policy"]
        assert (policy["source"], policy["last_error"]) == (str(config_dir / POLICY_NAME), None)
        if metrics is not None:
            # Served on the inherited TCP socket although the filter lets the daemon make none.
            import httpx

            host, port = metrics.getsockname()
            with Client(sock_path) as client:
                assert client.status()["metrics_listen"] == f"{host}:{port}"
            scraped = httpx.get(f"http://{host}:{port}/metrics", timeout=10)
            assert scraped.status_code == 200 and "edge_agent_ready 1.0" in scraped.text
            assert httpx.get(f"http://{host}:{port}/v1/status", timeout=10).status_code == 404
        notify.expect("WATCHDOG=1", proc, log, timeout=10)
        proc.send_signal(signal.SIGHUP)
        notify.expect("RELOADING=1", proc, log, timeout=30)
        notify.expect("READY=1", proc, log, timeout=30)
        proc.send_signal(signal.SIGTERM)
        notify.expect("STOPPING=1", proc, log, timeout=30)
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for held in (listener, metrics):
            if held is not None:
                held.close()
    # Its own socket the daemon removes; systemd's (socket activation) it must leave alone.
    assert sock_path.exists() == activation.startswith("socket")
