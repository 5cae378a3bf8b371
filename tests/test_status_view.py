"""The words of `status` and `policy reload` (unit): ages instead of timestamps, and a reload
answer as one line whatever it holds. The daemon-backed checks are in test_status_cli.py."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.cli.status_view import ago, describe_reload, span

NOW = 2_000_000_000.0


@pytest.mark.parametrize(
    ("seconds", "words"),
    [(0, "0 s"), (59.4, "59 s"), (61, "1 min 1 s"), (600, "10 min"), (3600, "1 h"), (3 * 3600 + 600, "3 h 10 min")],
)
def test_span_reads_as_a_person_says_it(seconds: float, words: str) -> None:
    assert span(seconds) == words


def test_ages_point_back_or_forward_and_never_show_the_timestamp() -> None:
    assert ago(NOW - 12, NOW) == "12 s ago"
    assert ago(NOW + 540, NOW) == "in 9 min"
    assert ago(NOW - 0.2, NOW) == ago(NOW + 0.2, NOW) == "just now"
    assert ago(None, NOW) == "never"


@given(st.floats(min_value=0, max_value=10 * 365 * 86400))
def test_a_span_is_at_most_two_units_of_small_numbers(seconds: float) -> None:
    words = span(seconds).split()
    assert len(words) in (2, 4) and all(w.isdigit() and len(w) <= 4 for w in words[::2])


POLICY = {"source": "/etc/edge-agent/policy.yaml", "loaded_at": NOW - 3, "digest": "abc123", "rules": ["hot"]}


def test_a_good_reload_is_one_line_naming_the_file_its_age_and_rules() -> None:
    ok, line, details = describe_reload({"reloaded": True, "policy": POLICY, "config_changed": []}, NOW)
    assert ok and not details
    assert line == "policy reloaded: /etc/edge-agent/policy.yaml (loaded 3 s ago, digest abc123; hot)"


def test_a_refused_reload_says_what_stays_and_keeps_every_error_as_detail() -> None:
    answer = {
        "reloaded": False,
        "policy": POLICY,
        "error": "policy.yaml:3: slo.latency_ms: must be > 0\npolicy.yaml:5: rules: unknown key",
        "config_error": "config.yaml: invalid setting workers",
        "out_of_service": {"int8": "hash mismatch"},
    }
    ok, line, details = describe_reload(answer, NOW)
    assert not ok and "\n" not in line
    assert line.startswith("policy refused, still in force: /etc/edge-agent/policy.yaml")
    assert "config refused" in line and "out of service: int8" in line
    assert details == [answer["error"], answer["config_error"]]


def test_settings_changed_by_a_reload_are_told_apart_from_those_needing_a_restart() -> None:
    answer = {"reloaded": True, "config_changed": ["log_level", "workers"], "need_restart": ["workers"]}
    assert describe_reload(answer, NOW) == (True, "settings applied: log_level; restart to apply: workers", [])


def test_the_policy_section_says_whether_signatures_are_required_and_by_which_keys() -> None:
    from rich.console import Console

    from agent.cli.status_view import _policy

    pol = {"source": "/etc/p.yaml", "loaded_at": NOW - 5, "version": 1, "digest": "abc", "rules": [], "failures": 0}

    def text(signatures: dict[str, object] | None) -> str:
        console = Console(record=True, width=120)
        console.print(_policy(pol, NOW, signatures))
        return console.export_text()

    assert "signed" not in text(None)  # a daemon from before signatures
    assert "not required" in text({"required": False})
    on = text(
        {"required": True, "keys": [{"id": "9D9DECBB187C6DED", "file": "/k.pub"}, {"id": "AFC7EB5", "file": "/b"}]}
    )
    assert "required, by key 9D9DECBB187C6DED, AFC7EB5" in on
