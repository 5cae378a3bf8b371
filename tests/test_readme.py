"""The README's commands, run as written."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.daemon import serving_as_written

pytestmark = pytest.mark.daemon  # every test here talks to a daemon subprocess

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()


def test_readme_curl_example_classifies_against_the_daemon_started_as_the_readme_says(tmp_path: Path) -> None:
    [curl] = re.findall(r"^curl -s --unix-socket run/edge-agent.sock .*/v1/classify$", README, flags=re.M)
    [serve] = re.findall(
        r"^python3 -m venv \.venv && \.venv/bin/pip install -e \. && \.venv/bin/edge-agent serve$", README, flags=re.M
    )
    assert serve.endswith("edge-agent serve")  # no flags: the default socket ./run/edge-agent.sock in the checkout
    socket = REPO / "run" / "edge-agent.sock"
    env = {**os.environ, "STATE_DIRECTORY": str(tmp_path / "state")}
    with serving_as_written(["serve"], REPO, env, tmp_path / "notify.sock"):
        out = subprocess.run(curl, shell=True, cwd=REPO, capture_output=True, text=True, timeout=30)
        assert '"label":"scratch"' in out.stdout, out.stdout + out.stderr
    assert not socket.exists()
