"""The layering holds where it matters at run time: the pure parts and the light CLI commands
load no onnxruntime (each checked in a fresh interpreter, so nothing imported by another test
hides a leak), CI runs the import-linter contracts of pyproject.toml, and no module or
function grows past a size a newcomer can read."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text()

PROBE = """
import sys
{body}
heavy = sorted(m for m in ("onnxruntime", "fastapi", "uvicorn", "agent.serving.runner") if m in sys.modules)
print("LOADED:" + ",".join(heavy))
"""


def loaded_after(body: str, *args: str) -> list[str]:
    """The heavy modules a fresh interpreter has loaded after running `body`."""
    code = PROBE.format(body=body)
    result = subprocess.run(
        [sys.executable, "-c", code, *args], cwd=REPO, capture_output=True, text=True, timeout=60, check=False
    )
    line = next((x for x in result.stdout.splitlines() if x.startswith("LOADED:")), None)
    assert line is not None, result.stdout + result.stderr
    return [m for m in line.removeprefix("LOADED:").split(",") if m]


@pytest.mark.parametrize(
    "module",
    ["agent.control.controller", "agent.control.simulate", "agent.control.rules", "agent.policy.store", "agent.values"],
)
def test_the_pure_core_imports_no_onnxruntime_and_no_server(module: str) -> None:
    assert loaded_after(f"import {module}") == []


def run_cli(*argv: str) -> str:
    return f"""
from agent.cli.main import app
try:
    app({list(argv)!r}, prog_name="edge-agent")
except SystemExit:
    pass
"""


def test_edge_agent_help_loads_no_onnxruntime() -> None:
    assert loaded_after(run_cli("--help")) == []


def test_policy_validate_loads_no_onnxruntime() -> None:
    assert loaded_after(run_cli("policy", "validate", str(REPO / "policies" / "default.yaml"))) == []


def test_policy_simulate_loads_no_onnxruntime() -> None:
    trace = REPO / "policies" / "traces" / "contention-2core.jsonl"
    assert (
        loaded_after(run_cli("policy", "simulate", str(REPO / "policies" / "default.yaml"), "--trace", str(trace)))
        == []
    )


def test_the_controller_reads_no_clock() -> None:
    """Time is an argument: the controller and the rules call no now(), time() or fromtimestamp()."""
    for path in ("agent/control/controller.py", "agent/control/rules.py"):
        tree = ast.parse((REPO / path).read_text())
        calls = {
            node.func.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }
        assert not calls & {"now", "today", "utcnow", "monotonic", "perf_counter", "fromtimestamp"}, path


def test_ci_runs_the_readme_test_command_and_it_checks_the_import_contracts() -> None:
    """The README's test command is .ci/run (CI runs it on a clean clone), which installs the
    tools the tests drive and runs the venv install, the import contracts and pytest."""
    assert re.search(r"^Run the tests.*?```sh\n\.ci/run\n```", README, flags=re.M | re.S)
    ci = (REPO / ".ci" / "run").read_text()
    [command] = re.findall(r"^python3 -m venv \.venv && .*$", ci, flags=re.M)
    assert ".venv/bin/lint-imports" in command and command.endswith(".venv/bin/pytest")
    for tool in ("minisign", "promtool", "systemd-analyze"):
        assert tool in ci


#: A module a newcomer reads in one sitting, a function that fits on a screen (issue 14).
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 400, 80


def test_no_module_or_function_of_the_package_outgrows_its_size() -> None:
    too_long: list[str] = []
    for path in sorted((REPO / "agent").rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        name = path.relative_to(REPO)
        if len(text.splitlines()) > MAX_MODULE_LINES:
            too_long.append(f"{name}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    too_long.append(f"{name}:{node.lineno} {node.name}: {length} lines")
    assert not too_long, too_long
