"""Where client commands look (unit): the one discovery rule for the daemon's socket and state
directory, in order: option, settings variable, systemd's variable, the service's path if it
exists, the checkout's. The service's paths are module constants pointed at temporary folders."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import paths
from agent.paths import SOCKET_NAME, Located, locate_socket, locate_state_dir
from agent.settings import Settings

VARIABLES = ("EDGE_AGENT_SOCKET", "EDGE_AGENT_STATE_DIR", "RUNTIME_DIRECTORY", "STATE_DIRECTORY")


@pytest.fixture
def machine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment, a checkout as the current directory, and the service's directories
    moved under tmp_path (not created: each test makes what it needs)."""
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    monkeypatch.chdir(checkout)
    monkeypatch.setattr(paths, "SERVICE_RUNTIME_DIR", tmp_path / "run" / "edge-agent")
    monkeypatch.setattr(paths, "SERVICE_STATE_DIR", tmp_path / "lib" / "edge-agent")
    return tmp_path


def _service_socket(tmp_path: Path) -> Path:
    """A socket file where the service keeps its own (bound, then left behind)."""
    path = tmp_path / "run" / "edge-agent" / SOCKET_NAME
    path.parent.mkdir(parents=True)
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    sock.close()
    return path


def _service_state(tmp_path: Path) -> Path:
    path = tmp_path / "lib" / "edge-agent"
    path.mkdir(parents=True)
    return path


def test_without_service_or_variables_the_checkouts_paths_are_used_and_the_service_path_is_named(
    machine: Path,
) -> None:
    sock, state = locate_socket(), locate_state_dir()
    assert sock.path == machine / "checkout" / "run" / SOCKET_NAME
    assert state.path == machine / "checkout" / "state"
    assert "checkout's default" in sock.how and str(machine / "run" / "edge-agent" / SOCKET_NAME) in sock.how
    assert "checkout's default" in state.how and str(machine / "lib" / "edge-agent") in state.how


def test_the_services_socket_and_state_directory_are_used_once_they_exist(machine: Path) -> None:
    sock, state = _service_socket(machine), _service_state(machine)
    assert locate_socket() == Located(sock, "the service's socket")
    assert locate_state_dir() == Located(state, "the service's state directory")


def test_a_service_runtime_directory_without_its_socket_does_not_count(machine: Path) -> None:
    (machine / "run" / "edge-agent").mkdir(parents=True)  # the service stopped; the directory is kept
    assert locate_socket().path == machine / "checkout" / "run" / SOCKET_NAME


def test_a_service_socket_this_user_may_not_look_at_still_counts(
    machine: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/run/edge-agent is 0750: for a user outside the group, stat() is refused. The service is
    there all the same; its connect error ("permission denied") tells that user what to do."""
    service = machine / "run" / "edge-agent" / SOCKET_NAME
    real_stat = os.stat

    def closed(path: str | os.PathLike[str], *args: object, **kwargs: object) -> os.stat_result:
        if Path(path) == service:
            raise PermissionError(13, "Permission denied", str(path))
        return real_stat(path, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(paths.os, "stat", closed)
    assert locate_socket() == Located(service, "the service's socket")


def test_systemds_variables_win_over_the_service_paths(machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command run inside a unit (ExecStartPre=edge-agent zoo profile) gets systemd's directories."""
    _service_socket(machine)
    _service_state(machine)
    monkeypatch.setenv("RUNTIME_DIRECTORY", f"{machine}/unit-run:{machine}/other")
    monkeypatch.setenv("STATE_DIRECTORY", str(machine / "unit-state"))
    assert locate_socket() == Located(machine / "unit-run" / SOCKET_NAME, "$RUNTIME_DIRECTORY")
    assert locate_state_dir() == Located(machine / "unit-state", "$STATE_DIRECTORY")


def test_the_settings_variables_win_over_systemds(machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _service_socket(machine)
    _service_state(machine)
    monkeypatch.setenv("RUNTIME_DIRECTORY", str(machine / "unit-run"))
    monkeypatch.setenv("STATE_DIRECTORY", str(machine / "unit-state"))
    monkeypatch.setenv("EDGE_AGENT_SOCKET", str(machine / "mine.sock"))
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(machine / "mine"))
    assert locate_socket() == Located(machine / "mine.sock", "$EDGE_AGENT_SOCKET")
    assert locate_state_dir() == Located(machine / "mine", "$EDGE_AGENT_STATE_DIR")


@pytest.mark.parametrize(("locate", "option"), [(locate_socket, "--socket"), (locate_state_dir, "--state-dir")])
def test_the_option_wins_over_everything(
    machine: Path, monkeypatch: pytest.MonkeyPatch, locate: Callable[[Path | None], Located], option: str
) -> None:
    _service_socket(machine)
    _service_state(machine)
    for name in VARIABLES:
        monkeypatch.setenv(name, str(machine / name.lower()))
    assert locate(machine / "given") == Located(machine / "given", option)


def test_the_daemon_reads_the_same_variables_as_its_clients(machine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One variable points `serve` and the client commands at the same socket and state."""
    monkeypatch.setenv("EDGE_AGENT_SOCKET", str(machine / "shared.sock"))
    monkeypatch.setenv("EDGE_AGENT_STATE_DIR", str(machine / "shared-state"))
    settings = Settings()
    assert settings.socket == locate_socket().path
    assert settings.state_dir == locate_state_dir().path
