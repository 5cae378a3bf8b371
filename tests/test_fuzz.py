"""Fuzzing the real daemon through its Unix socket, with a small budget of the generators that
`python -m bench.fuzz` runs by the thousand: no crash, no 5xx for a client's mistake, every
error from the app JSON {"error": {"code", "message"}}, and normal requests still served."""

from __future__ import annotations

import re
import socket
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.fuzz.cases import Target, catalogue, discover, normal_request, strategies
from tests.fuzz.wire import OK, Case, Outcome, health, run_case

pytestmark = pytest.mark.daemon  # every test here talks to a daemon subprocess

FUZZ = settings(database=None, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def target(daemon: Any) -> Target:
    return discover(daemon.socket_path)


@pytest.fixture(scope="module")
def generators(target: Target) -> dict[str, st.SearchStrategy[Case]]:
    return strategies(target)


def check(daemon: Any, case: Case) -> Outcome:
    """Send one case; the daemon must judge it well and stay alive."""
    outcome = run_case(daemon.socket_path, case)
    assert not outcome.failed, f"{outcome.verdict}: {outcome.detail}\n{case.describe()}"
    assert daemon.proc.poll() is None and health(daemon.socket_path), (
        f"daemon down after {case.describe()}\n{daemon.log()[-3000:]}"
    )
    return outcome


def assert_still_serving(daemon: Any) -> None:
    outcome = run_case(daemon.socket_path, normal_request())
    assert outcome.verdict == OK and outcome.answers[0].status == 200, outcome.detail


def test_named_hostile_payloads_get_json_answers(daemon: Any, target: Target) -> None:
    """PNG 60000x60000, zero-filled bombs, lying .npy headers, pickles, v2 tensors that lie...
    (the statuses that are known are checked through `Case.expect`)."""
    cases = catalogue(target)
    assert sum(case.expect is not None for case in cases) >= 10
    for case in cases:
        check(daemon, case)
    assert_still_serving(daemon)


@settings(FUZZ, max_examples=150)
@given(data=st.data())
def test_every_route_of_the_schema_answers_json_never_5xx(
    daemon: Any, generators: dict[str, Any], data: st.DataObject
) -> None:
    check(daemon, data.draw(generators["schema"]))


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_malformed_http_is_refused_without_harm(daemon: Any, generators: dict[str, Any], data: st.DataObject) -> None:
    check(daemon, data.draw(generators["raw"]))


@settings(FUZZ, max_examples=120)
@given(data=st.data())
def test_hostile_payloads_are_refused_with_json_errors(
    daemon: Any, generators: dict[str, Any], data: st.DataObject
) -> None:
    check(daemon, data.draw(generators["payload"]))


def test_idle_connections_cannot_lock_other_clients_out(daemon: Any) -> None:
    idle = []
    try:
        for _ in range(400):
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            idle.append(conn)
            conn.connect(str(daemon.socket_path))
        outcome = run_case(daemon.socket_path, normal_request())
        assert outcome.verdict == OK and outcome.answers[0].status == 200, outcome.detail
    finally:
        for conn in idle:
            conn.close()


def test_after_fuzzing_requests_succeed_and_nothing_was_an_internal_error(daemon: Any) -> None:
    assert_still_serving(daemon)
    with httpx.Client(
        transport=httpx.HTTPTransport(uds=str(daemon.socket_path)), base_url="http://x", timeout=30
    ) as http:
        text = http.get("/metrics").text
        assert http.get("/v1/status").json()["last_error"] is None
    internal = re.findall(r'^edge_agent_errors_total\{code="internal"\} (\S+)$', text, re.M)
    assert sum(map(float, internal)) == 0, "an unexpected exception was answered 500 (or swallowed); see the daemon log"
    assert '"request_failed"' not in daemon.log()
