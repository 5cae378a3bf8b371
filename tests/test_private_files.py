"""Folders and state files the daemon makes, against a local user who plants links, FIFOs and
odd files (issue 20, point 5 and the pin file of point 6)."""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from agent.daemon.pin_file import load_pin, save_pin
from agent.private_files import UnsafePath, private_dir, read_private, write_private
from agent.values import Config, Pin
from tests.daemon import DaemonProcess
from tests.zoos import make_zoo


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.fixture
def open_umask():  # type: ignore[no-untyped-def]
    old = os.umask(0)
    yield
    os.umask(old)


def test_folders_are_made_0750_whatever_the_umask(tmp_path: Path, open_umask: None) -> None:
    private_dir(tmp_path / "a" / "b" / "c")
    assert [mode(tmp_path / p) for p in ("a", "a/b", "a/b/c")] == [0o750] * 3


def test_a_folder_any_user_may_write_or_another_user_owns_is_refused(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(UnsafePath, match="writable by every user"):
        private_dir(shared)
    if os.getuid() == 0:
        theirs = tmp_path / "theirs"
        theirs.mkdir(0o755)
        os.chown(theirs, 4321, 4321)
        with pytest.raises(UnsafePath, match="belongs to uid 4321"):
            private_dir(theirs)


def test_a_planted_link_at_the_target_is_replaced_not_followed(tmp_path: Path, open_umask: None) -> None:
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    target = tmp_path / "pin.json"
    target.symlink_to(secret)
    write_private(target, b"{}")
    assert secret.read_text() == "root only\n"
    assert not target.is_symlink() and target.read_bytes() == b"{}" and mode(target) == 0o600
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


@pytest.mark.parametrize("kind", ["fifo", "link", "large", "folder"])
def test_state_files_that_are_not_plain_small_files_of_ours_are_refused(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "pin.json"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link":
        (tmp_path / "elsewhere").write_text("{}")
        path.symlink_to(tmp_path / "elsewhere")
    elif kind == "large":
        path.write_bytes(b" " * (100 * 1024 * 1024))
    else:
        path.mkdir()
    started = time.monotonic()
    with pytest.raises(UnsafePath):
        read_private(path)
    assert time.monotonic() - started < 5  # a FIFO does not block the read


@pytest.mark.skipif(os.getuid() != 0, reason="giving a file to another uid needs root")
def test_a_state_file_of_another_user_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "pin.json"
    path.write_text("{}")
    os.chown(path, 4321, 4321)
    with pytest.raises(UnsafePath, match="belongs to uid 4321"):
        read_private(path)


@pytest.mark.parametrize(
    "body",
    [
        '{"config": "full@1", "until": Infinity, "reason": "x"}',
        '{"config": "full@1", "until": NaN, "reason": "x"}',
        '{"config": "full@1"}',
        "[1, 2]",
        "not json",
    ],
)
def test_a_pin_file_with_bad_values_is_no_pin_and_never_quoted(tmp_path: Path, body: str, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "pin.json"
    path.write_text(body)
    assert load_pin(path) is None
    assert body not in capsys.readouterr().err


def test_a_pin_round_trips(tmp_path: Path, open_umask: None) -> None:
    path = tmp_path / "state" / "pin.json"
    pin = Pin(Config("full", 0.5), time.time() + 60, "maintenance")
    save_pin(path, pin)
    assert load_pin(path) == pin
    assert mode(path.parent) == 0o750 and mode(path) == 0o600


# -- through the real daemon --------------------------------------------------------------------


class NestedSocketDaemon(DaemonProcess):
    """The daemon's socket two missing folders down, as a first start under /run finds it."""

    @property
    def socket_path(self) -> Path:
        return self.workdir / "run" / "sub" / "edge-agent.sock"


@pytest.mark.daemon
def test_under_umask_000_the_daemon_makes_0750_folders_and_never_follows_a_planted_link(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False)})
    state = tmp_path / "d" / "var" / "state"
    d = NestedSocketDaemon(
        tmp_path / "d",
        args=["--zoo", str(zoo)],
        env={"EDGE_AGENT_WARMUP_RUNS": "1", "STATE_DIRECTORY": str(state)},
    )
    d.start(preexec=lambda: os.umask(0))
    secret = tmp_path / "secret"
    secret.write_text("root only\n")
    try:
        assert mode(d.socket_path.parent) == 0o750 and mode(d.socket_path.parent.parent) == 0o750
        with d.client() as c:
            c.pin("a@1", 600, "first")
            assert mode(state) == 0o750 and mode(state.parent) == 0o750 and mode(state / "pin.json") == 0o600
            c.unpin()
            (state / "pin.json").symlink_to(secret)
            c.pin("a@1", 600, "second")
        assert secret.read_text() == "root only\n"
        assert json.loads((state / "pin.json").read_text())["reason"] == "second"
    finally:
        assert d.stop() == 0


@pytest.mark.daemon
@pytest.mark.parametrize("planted", ["fifo", "unknown variant"])
def test_a_bad_pin_file_starts_the_daemon_unpinned_with_one_clear_line(tmp_path: Path, planted: str) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False)})
    state = tmp_path / "d" / "state"
    state.mkdir(parents=True, mode=0o750)
    if planted == "fifo":
        os.mkfifo(state / "pin.json")
    else:
        (state / "pin.json").write_text(json.dumps({"config": "nope@1", "until": time.time() + 600, "reason": "x"}))
    d = DaemonProcess(tmp_path / "d", args=["--zoo", str(zoo)], env={"EDGE_AGENT_WARMUP_RUNS": "1"}).start(timeout=60)
    try:
        with d.client() as c:
            assert c.status()["config"]["pinned"] is None
        log = d.log()
        assert log.count('"pin_file_invalid"') + log.count('"pin_not_restored"') == 1
        assert '"pin_restored"' not in log
    finally:
        assert d.stop() == 0
