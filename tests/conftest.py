from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import structlog

from agent.paths import default_zoo_dir

REPO = Path(__file__).resolve().parent.parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses the `daemon` fixture belongs to the `daemon` group, marked or not."""
    for item in items:
        if "daemon" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.daemon)


@pytest.fixture(autouse=True)
def structlog_config_restored():  # type: ignore[no-untyped-def]
    """A CLI command run in process (typer's CliRunner) configures logging for the whole
    process, e.g. `telemetry record` at level warning; a later test that captures info events
    would then see none. Each test gets back the configuration it started with."""
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


@pytest.fixture(scope="session")
def shipped_zoo() -> Path:
    return default_zoo_dir()


@pytest.fixture
def zoo_copy(tmp_path: Path, shipped_zoo: Path) -> Path:
    """A private copy of the shipped zoo that a test may damage."""
    dest = tmp_path / "zoo"
    dest.mkdir()
    for item in shipped_zoo.iterdir():
        if item.suffix in (".onnx", ".json"):
            shutil.copy2(item, dest / item.name)
    return dest


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One real daemon on the shipped zoo for a test module."""
    from tests.daemon import DaemonProcess

    proc = DaemonProcess(tmp_path_factory.mktemp("daemon")).start()
    yield proc
    proc.stop()


@pytest.fixture
def sample_png(tmp_path: Path) -> Path:
    from tests.samples import agreed_png

    return agreed_png(tmp_path / "img")
