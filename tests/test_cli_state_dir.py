"""`zoo profile` and `zoo eval --save` write where the daemon reads: the state directory found by
the rule in `agent.paths` (the service's on a gateway), named in their output with how it was
chosen; a place they cannot write is refused before the measurement, not after it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agent import paths
from agent.cli.main import app
from agent.paths import DEVICE_PROFILE_NAME, SITE_ACCURACY_NAME


@pytest.fixture
def gateway(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A machine with the service installed (its state directory exists), no variables set, and
    a current directory that is not the service's."""
    for name in ("EDGE_AGENT_STATE_DIR", "STATE_DIRECTORY"):
        monkeypatch.delenv(name, raising=False)
    service = tmp_path / "var-lib-edge-agent"
    service.mkdir()
    monkeypatch.setattr(paths, "SERVICE_STATE_DIR", service)
    monkeypatch.chdir(tmp_path)
    return service


def test_zoo_profile_on_a_gateway_writes_the_services_state_directory(gateway: Path, tmp_path: Path) -> None:
    from tests.zoos import make_zoo

    zoo = make_zoo(tmp_path / "zoo", {"tiny": (0.9, False)})
    result = CliRunner().invoke(app, ["zoo", "profile", "--zoo", str(zoo), "--runs", "1"])
    assert result.exit_code == 0, result.output
    written = gateway / DEVICE_PROFILE_NAME
    assert set(json.loads(written.read_text())["variants"]) == {"tiny"}
    # the zoo's console wraps at its width; the words are what counts
    assert f"wrote {written} (state directory: the service's state directory)" in result.output.replace("\n", "")
    assert not (tmp_path / "state").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["zoo", "profile", "--runs", "1", "--state-dir", "FILE"],
        ["zoo", "eval", "--data", "DATA", "--save", "--state-dir", "FILE"],
    ],
)
def test_a_state_directory_that_cannot_be_written_is_refused_before_measuring(
    gateway: Path, tmp_path: Path, args: list[str]
) -> None:
    not_a_folder = tmp_path / "a-file"
    not_a_folder.write_text("")
    (tmp_path / "data").mkdir()
    args = [str(not_a_folder) if a == "FILE" else str(tmp_path / "data") if a == "DATA" else a for a in args]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    name = DEVICE_PROFILE_NAME if "profile" in args else SITE_ACCURACY_NAME
    said = result.output.replace("\n", "")
    assert f"cannot write {not_a_folder / name} (state directory: --state-dir): {not_a_folder} is not a folder" in said
    assert "Traceback" not in result.output and "latency on this device" not in result.output
