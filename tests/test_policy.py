"""The operator policy file: refusing broken files clearly, the shipped policies, rule
resolution, and the last-good reload behaviour the daemon relies on."""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from agent.cli.main import app
from agent.control.rules import resolve
from agent.errors import AgentError
from agent.paths import default_policy_path
from agent.policy.loader import MAX_BYTES, PolicyError, load_policy, parse_policy
from agent.policy.schema import FALLBACK_POLICY, Policy, policy_warnings
from agent.policy.store import PolicyStore, ReloadResult
from agent.telemetry.snapshot import Snapshot
from tests.daemon import DaemonProcess, eventually
from tests.zoos import make_zoo

REPO = Path(__file__).resolve().parent.parent
BROKEN_DIR = REPO / "tests" / "policies_broken"
SHIPPED = sorted((REPO / "policies").glob("*.yaml"))
ZOO_VARIANTS = ("full", "pruned", "int8", "lowres", "int8-lowres")
ZOO_LIST = ", ".join(sorted(ZOO_VARIANTS))

#: What each broken file's message must contain (besides the file name). Every file in
#: tests/policies_broken/ needs an entry, so a new broken case cannot go unchecked.
EXPECTED = {
    "alias-bomb.yaml": ":4:4: anchors and aliases",
    "bad-time.yaml": ':7:22: rules[0].when.time_between[0]: expected a local time "HH:MM"',
    "bad-variant-name.yaml": ":8:24: rules[0].then.allow_variants[0]: not a variant name",
    "binary-garbage.yaml": ":1:1: not UTF-8 text",
    "budget-above-one.yaml": ":5:13: allowed.budgets[0]: Input should be less than or equal to 1",
    "comments-only.yaml": ": empty policy file",
    "custom-include-tag.yaml": ":3:6: YAML tag '!include' is not allowed",
    "deep-nesting.yaml": ":4:29: nesting deeper than 16 levels",
    "duplicate-keys.yaml": ":5:3: invalid YAML: duplicate key 'latency_ms' (first at line 3)",
    "duplicate-rule-names.yaml": ":5:3: rules: rule name 'hot' is used by rules 0 and 1",
    "empty-budgets.yaml": ":5:12: allowed.budgets: List should have at least 1 item",
    "empty.yaml": ": empty policy file",
    "future-version.yaml": ":2:10: version: unsupported policy version 2; this edge-agent supports version 1",
    "headroom-above-one.yaml": ":4:13: slo.headroom: Input should be less than or equal to 1",
    "indentation-mismatch.yaml": ":4:3: invalid YAML: this line's indentation matches none of the keys or list items"
    " above it; hint: keys of one mapping, and items of one list, must start in the same column",
    "infinite-slo.yaml": ":3:15: slo.latency_ms: Input should be a finite number",
    "invalid-utf8.yaml": ":1:35: not UTF-8 text (byte 0xe9",
    "key-at-wrong-level.yaml": ":8:5: rules[0].slo_ms: not valid here; `slo_ms` belongs under `rules[0].then:`",
    "key-indented-under-a-value.yaml": ":4:13: invalid YAML: a 'key:' where a value was expected; hint: indent this line",
    "merge-key.yaml": ":3:7: anchors and aliases",
    "missing-slo.yaml": ":1:1: slo: missing required field",
    "missing-version.yaml": ":1:1: version: missing required field",
    "misspelt-required-key.yaml": ":4:3: slo.latncy_ms: unknown key 'latncy_ms'; did you mean 'latency_ms'?",
    "negative-dwell.yaml": ":5:12: hysteresis.dwell_s: Input should be greater than or equal to 0",
    "negative-slo.yaml": ":3:15: slo.latency_ms: Input should be greater than 0 (got '-25')",
    "nul-byte.yaml": ":3:16: character U+0000 is not allowed",
    "on-battery-wrong-type.yaml": ":6:24: rules[0].when.on_battery: Input should be a valid boolean",
    "percentile-out-of-range.yaml": ":4:15: slo.percentile: Input should be less than or equal to 99.9",
    "python-name-tag.yaml": ":3:6: YAML tag 'tag:yaml.org,2002:python/name:os.system' is not allowed",
    "python-object-tag.yaml": ":4:15: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
    "rule-without-action.yaml": ":8:11: rules[0].then: a rule needs at least one action",
    "rule-without-condition.yaml": ":6:11: rules[0].when: a rule needs at least one condition",
    "rule-without-name.yaml": ":5:5: rules[0].name: missing required field",
    "string-version.yaml": ":1:10: version: unsupported policy version '1'",
    "tab-indentation.yaml": ":3:1: invalid YAML: a tab character; hint: YAML indents with spaces only",
    "time-between-equal.yaml": ":7:7: rules[0].when: time_between: start and end are equal",
    "top-level-list.yaml": ":1:1: the top level must be a mapping",
    "top-level-scalar.yaml": ":1:1: the top level must be a mapping",
    "two-documents.yaml": ":4:1: invalid YAML: a second YAML document ('---'); hint: ",
    "unclosed-bracket.yaml": ":3:8: invalid YAML: the '{' at line 2, column 6 is not closed; hint: close it with '}'",
    "unclosed-quote.yaml": ":8:1: invalid YAML: the quote at line 5, column 11 is never closed; hint: ",
    "unknown-key.yaml": ":4:3: slo.latncy_ms: unknown key 'latncy_ms'; did you mean 'latency_ms'?",
    "unknown-top-level-key.yaml": ":4:1: rule: unknown key 'rule'; did you mean 'rules'?",
    # Well-formed, but not a variant of the shipped zoo, which `validate` checks names against.
    "unknown-variant.yaml": ":8:24: rules[0].then.allow_variants[0]: unknown variant 'int8_lowres': not in the zoo",
    "unknown-variant-type.yaml": ":5:20: allowed.variants[1]: Input should be a valid string (got '8')",
    "wrong-type-latency.yaml": ":3:15: slo.latency_ms: Input should be a valid number",
    "zero-slo-scale.yaml": ":7:23: rules[0].then.slo_scale: Input should be greater than or equal to 0.1",
    "zero-slo.yaml": ":3:15: slo.latency_ms: Input should be greater than 0 (got '0')",
}

BASE = "version: 1\nslo:\n  latency_ms: 25\n"


def _broken_files() -> list[Path]:
    return sorted(BROKEN_DIR.iterdir())


def _oversize(tmp: Path) -> Path:
    """A well-formed policy padded with comments past the limit: refused for its size alone."""
    path = tmp / "oversize.yaml"
    path.write_text(BASE + ("# padding " + "x" * 70 + "\n") * (MAX_BYTES // 80 + 10), encoding="utf-8")
    assert path.stat().st_size > MAX_BYTES
    return path


def _policy(text: str) -> Policy:
    return parse_policy(BASE + text, "test.yaml")


def _snap(**kw: object) -> Snapshot:
    return Snapshot(time=0.0, **kw)  # type: ignore[arg-type]


NOON = dt.time(12, 0)


# -- broken files --------------------------------------------------------------------------------


def test_broken_folder_has_enough_cases_and_each_has_an_expectation() -> None:
    names = {p.name for p in _broken_files()}
    assert len(names) >= 22
    assert names == set(EXPECTED), "add the new file's expected message to EXPECTED"


@pytest.mark.parametrize("path", _broken_files(), ids=lambda p: p.name)
def test_validate_refuses_broken_file_naming_place_and_field(path: Path) -> None:
    result = CliRunner().invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"{path}{EXPECTED[path.name]}" in result.output


@pytest.mark.daemon
def test_validate_subprocess_refuses_every_broken_file_without_traceback_or_side_effect(tmp_path: Path) -> None:
    files = [*_broken_files(), _oversize(tmp_path)]
    proc = subprocess.run(
        [sys.executable, "-m", "agent", "policy", "validate", *map(str, files)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1
    assert "Traceback" not in output
    assert "ok " not in proc.stdout
    for path in files:
        lines = [line for line in output.splitlines() if line.startswith(str(path))]
        assert lines, f"no message for {path.name}"
        expected = EXPECTED.get(path.name, f": policy file is {path.stat().st_size} bytes, over the 64 KiB limit")
        assert lines[0] == f"{path}{expected}" or lines[0].startswith(f"{path}{expected}")
    # python-object-tag.yaml would `touch` this file under an unsafe loader.
    assert not (tmp_path / "edge-agent-policy-pwned").exists()


def test_oversize_file_is_refused_before_parsing(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"over the 64 KiB limit"):
        load_policy(_oversize(tmp_path))
    with pytest.raises(PolicyError, match=r"over the 64 KiB limit"):
        parse_policy(b"#" * (MAX_BYTES + 1), "bytes")


def test_alias_bomb_is_refused_fast_without_building_anything() -> None:
    levels = "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdefghijkl", "bcdefghijklm", strict=True)
    )
    bomb = "version: 1\na: &a [" + ", ".join(['"lol"'] * 10) + "]\n" + levels
    tracemalloc.start()
    started = time.perf_counter()
    with pytest.raises(PolicyError, match="anchors and aliases"):
        parse_policy(bomb, "bomb.yaml")
    elapsed = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 5 * 1024 * 1024


def test_nesting_far_past_the_limit_is_refused_without_recursion() -> None:
    deep = "version: 1\nslo: " + "[" * 30_000 + "]" * 30_000
    with pytest.raises(PolicyError, match="nesting deeper than 16 levels"):
        parse_policy(deep, "deep.yaml")


def test_policy_error_is_an_agent_error_with_stable_code() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("version: 1\nslo: {latency_ms: 0}\n", "policies/x.yaml")
    assert isinstance(caught.value, AgentError)
    assert (caught.value.code, caught.value.status) == ("invalid_policy", 422)
    assert caught.value.message == "policies/x.yaml:2:19: slo.latency_ms: Input should be greater than 0 (got '0')"


def test_every_problem_is_reported_in_the_message_too() -> None:
    with pytest.raises(PolicyError) as caught:
        parse_policy("version: 1\nslo:\n  latency_ms: 0\n  headroom: 2\n", "x.yaml")
    assert [p.split(": ")[1] for p in caught.value.problems] == ["slo.latency_ms", "slo.headroom"]
    assert caught.value.message == "\n".join(caught.value.problems)  # what status and the log show
    assert "more)" not in caught.value.message


def test_fifo_and_directory_are_refused_without_blocking(tmp_path: Path) -> None:
    fifo = tmp_path / "policy.fifo"
    os.mkfifo(fifo)
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(fifo)
    with pytest.raises(PolicyError, match="not a regular file"):
        load_policy(tmp_path)
    with pytest.raises(PolicyError, match="cannot read policy file"):
        load_policy(tmp_path / "missing.yaml")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=300), st.text(max_size=300)))
def test_any_input_is_a_policy_or_a_policy_error(data: bytes | str) -> None:
    try:
        parse_policy(data, "fuzz.yaml", ZOO_VARIANTS)
    except PolicyError as exc:
        assert exc.problems and all(p.startswith("fuzz.yaml") and "\n" not in p for p in exc.problems)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_shipped_policy_is_a_policy_or_a_policy_error(data: st.DataObject) -> None:
    source = bytearray(default_policy_path().read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(source) - 1))
        junk = data.draw(st.binary(max_size=3) | st.sampled_from([b"&a ", b"*a", b"!!", b"\t", b"[", b"{", b":", b"-"]))
        source[pos : pos + data.draw(st.integers(0, 8))] = junk
    try:
        parse_policy(bytes(source), "mutant.yaml", ZOO_VARIANTS)
    except PolicyError as exc:
        assert all(p.startswith("mutant.yaml") and "\n" not in p for p in exc.problems)
        invalid_yaml = [p for p in exc.problems if ": invalid YAML: " in p]
        assert all("; hint: " in p or "duplicate key" in p for p in invalid_yaml), invalid_yaml


# -- YAML details operators run into ---------------------------------------------------------------


def test_unquoted_clock_times_stay_times_not_base_60_numbers() -> None:
    policy = _policy("rules:\n  - name: night\n    when: {time_between: [22:00, 6:30]}\n    then: {max_budget: 0.5}\n")
    assert policy.rules[0].when.time_between == ("22:00", "06:30")


def test_yes_and_no_are_booleans_and_utf8_bom_is_accepted() -> None:
    text = "\ufeff" + BASE + "rules:\n  - name: b\n    when: {on_battery: yes}\n    then: {max_budget: 0.5}\n"
    assert parse_policy(text.encode("utf-8"), "bom.yaml").rules[0].when.on_battery is True


def test_budgets_are_deduplicated_and_sorted_largest_first() -> None:
    assert _policy("allowed:\n  budgets: [0.5, 1.0, 0.5, 0.25]\n").allowed.budgets == [1.0, 0.5, 0.25]


# -- messages that point at the cause --------------------------------------------------------------


def _problems(text: str, known: tuple[str, ...] | None = None) -> tuple[str, ...]:
    with pytest.raises(PolicyError) as caught:
        parse_policy(text, "p.yaml", known)
    return caught.value.problems


def test_a_misspelt_required_key_comes_before_the_missing_field_it_explains() -> None:
    problems = _problems("version: 1\nslo:\n  latncy_ms: 25\n  window_s: 5\n")
    assert problems == (
        "p.yaml:3:3: slo.latncy_ms: unknown key 'latncy_ms'; did you mean 'latency_ms'?",
        "p.yaml:3:3: slo.latency_ms: missing required field (see slo.latncy_ms at line 3)",
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "rules:\n  - name: hot\n    when: {cpu_above: 90}\n    then: {max_budget: 0.5}\n    latency_ms: 20\n",
            "p.yaml:8:5: rules[0].latency_ms: not valid here; `latency_ms` belongs under `slo:`",
        ),
        (
            "rules:\n  - name: hot\n    cpu_above: 90\n    when: {on_battery: true}\n    then: {max_budget: 0.5}\n",
            "p.yaml:6:5: rules[0].cpu_above: not valid here; `cpu_above` belongs under `rules[0].when:`",
        ),
        (
            "rules:\n  - name: a\n    when: {cpu_above: 90}\n    then: {max_budget: 0.5, name: b}\n",
            "p.yaml:7:29: rules[0].then.name: not valid here; `name` belongs directly in `rules[0]`",
        ),
        (
            "when: {cpu_above: 90}\n",
            "p.yaml:4:1: when: not valid here; `when` belongs directly in each item of `rules:`",
        ),
        ("dwell_s: 3\n", "p.yaml:4:1: dwell_s: not valid here; `dwell_s` belongs under `hysteresis:`"),
    ],
)
def test_a_known_key_at_the_wrong_level_is_named_as_misplaced(text: str, expected: str) -> None:
    problems = _problems(BASE + text)
    assert problems[0] == expected
    assert "spelling" not in problems[0]


def test_a_required_key_at_the_wrong_level_is_first_and_the_missing_field_points_at_it() -> None:
    problems = _problems("version: 1\nslo:\n  percentile: 95\nlatency_ms: 25\n")
    assert problems == (
        "p.yaml:4:1: latency_ms: not valid here; `latency_ms` belongs under `slo:`",
        "p.yaml:3:3: slo.latency_ms: missing required field (see latency_ms at line 4)",
    )


def test_an_unknown_key_suggests_a_close_one_elsewhere_or_lists_those_valid_here() -> None:
    assert _problems(BASE + "allowed: {dwel_s: 3}\n") == (
        "p.yaml:4:11: allowed.dwel_s: unknown key 'dwel_s'; did you mean 'dwell_s' (under `hysteresis:`)?",
    )
    assert _problems(BASE + "hysteresis: {zzz: 1}\n") == (
        "p.yaml:4:14: hysteresis: unknown key (like no key of the format, so not repeated here); "
        "valid keys here: dwell_s, min_switch_interval_s",
    )


def test_a_file_that_is_no_policy_is_not_echoed_in_its_errors() -> None:
    """A policy path pointed at another file (a symlink to a root-only one): its first line,
    whatever YAML makes of it, appears in no error (issue 20, point 7)."""
    secret = "hunter2-secret-token"
    for first_line in (secret, f"{secret}: x", f"root:$6${secret}:19000:0:99999:7:::", f"version: {secret}"):
        with pytest.raises(PolicyError) as caught:
            parse_policy(first_line + "\nmore\n", "p.yaml")
        assert secret not in caught.value.message, caught.value.message


@pytest.mark.parametrize(
    ("text", "place", "what"),
    [
        ("version: 1\nslo:\n\tlatency_ms: 25\n", "3:1", "a tab character; hint: YAML indents with spaces only"),
        ("version: 1\nslo:\n    latency_ms: 25\n  window_s: 5\n", "4:3", "this line's indentation matches none"),
        ("version: 1\nslo:\n  latency_ms: 25\n    window_s: 5\n", "4:13", "a 'key:' where a value was expected"),
        ("version: 1\nslo:\n  latency_ms 25\n  window_s: 5\n", "4:11", "a 'key:' where a value was expected"),
        ("version: 1\nslo: {latency_ms: 25\n", "3:1", "the '{' at line 2, column 6 is not closed"),
        ("version: 1\nslo: {latency_ms: 25}\nallowed: {budgets: [1, 0.5}\n", "3:27", "the '[' at line 3"),
        ("version: 1\nslo: {latency_ms: 25}}\n", "2:22", "a '}' that closes nothing"),
        ("version: 1\nslo:\n  latency_ms: 25\n  - 40\n", "4:3", "a list item ('- ') among the keys of a mapping"),
        ("version: 1\nslo: @25\n", "2:6", "a value cannot start with @; hint: put the value in quotes"),
        ('version: 1\nslo: {latency_ms: "25}\n', "3:1", "the quote at line 2, column 19 is never closed"),
        ("version: 1\nslo: {latency_ms: 25}\nrules\n", "4:1", "line 3 has no ':' after its key"),
        ('version: 1\nslo: "\\d"\n', "2:8", "unknown escape character 'd'; hint: "),
    ],
)
def test_a_yaml_syntax_error_is_file_line_col_in_plain_words_with_a_hint(text: str, place: str, what: str) -> None:
    (problem,) = _problems(text)
    assert problem.startswith(f"p.yaml:{place}: invalid YAML: {what}"), problem
    assert "; hint: " in problem and "\n" not in problem
    assert "<block" not in problem and "while parsing" not in problem and "while scanning" not in problem


def test_unknown_variants_are_errors_against_a_zoo_with_the_closest_name() -> None:
    text = BASE + (
        "allowed: {variants: [full, int8_lowres]}\n"
        "rules:\n  - name: hot\n    when: {cpu_above: 90}\n    then: {allow_variants: [lowress], prefer: prunned}\n"
    )
    assert parse_policy(text, "p.yaml").allowed.variants == ["full", "int8_lowres"]  # no zoo: names not checked
    zoo = f"({ZOO_LIST})"
    assert _problems(text, ZOO_VARIANTS) == (
        f"p.yaml:4:28: allowed.variants[1]: unknown variant 'int8_lowres': not in the zoo {zoo}; "
        "did you mean 'int8-lowres'?",
        f"p.yaml:8:29: rules[0].then.allow_variants[0]: unknown variant 'lowress': not in the zoo {zoo}; "
        "did you mean 'lowres'?",
        f"p.yaml:8:47: rules[0].then.prefer: unknown variant 'prunned': not in the zoo {zoo}; did you mean 'pruned'?",
    )
    assert _problems(BASE + "allowed: {variants: [resnet]}\n", ("a", "b")) == (
        "p.yaml:4:22: allowed.variants[0]: unknown variant 'resnet': not in the zoo (a, b)",
    )


# -- shipped policies ------------------------------------------------------------------------------


def test_the_four_operator_policies_are_shipped() -> None:
    assert {p.name for p in SHIPPED} >= {"default.yaml", "battery-saver.yaml", "thermal.yaml", "strict-latency.yaml"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_policy_validates_without_warnings(path: Path) -> None:
    policy = load_policy(path, ZOO_VARIANTS)
    assert policy_warnings(policy) == []
    result = CliRunner().invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 0, result.output
    assert f"ok {path}" in result.stdout


def test_default_policy_is_the_documented_one() -> None:
    policy = load_policy(default_policy_path())
    assert (policy.slo.percentile, policy.slo.latency_ms, policy.slo.window_s, policy.slo.headroom) == (95, 25, 5, 0.85)
    assert policy.hysteresis.dwell_s == 5
    assert policy.allowed.variants is None
    assert policy.slo == FALLBACK_POLICY.slo and policy.hysteresis == FALLBACK_POLICY.hysteresis
    low = resolve(policy, _snap(battery_percent=15, on_ac=False), NOON)
    assert low.variants == {"int8", "lowres", "int8-lowres"} and low.budgets == (0.5, 0.35, 0.25)
    hot = resolve(policy, _snap(temperature_c=85), NOON)
    assert hot.variants == {"lowres", "int8-lowres"} and hot.budgets == (1.0, 0.7, 0.5, 0.35, 0.25)
    both = resolve(policy, _snap(battery_percent=15, on_ac=False, temperature_c=85), NOON)
    assert both.variants == {"lowres", "int8-lowres"} and both.budgets[0] == 0.5
    assert both.rules == ("battery-low", "hot")


def test_thermal_policy_steps_down_with_temperature() -> None:
    policy = load_policy(REPO / "policies" / "thermal.yaml")
    steps = [resolve(policy, _snap(temperature_c=t), NOON) for t in (60, 75, 85, 95)]
    assert [max(s.budgets) for s in steps] == [1.0, 0.7, 0.5, 0.25]
    assert steps[3].variants == {"int8-lowres"} and steps[3].slo_ms == pytest.approx(37.5)


def test_validate_ok_and_bad_together_exits_1_and_reports_both(tmp_path: Path) -> None:
    bad = BROKEN_DIR / "zero-slo.yaml"
    result = CliRunner().invoke(app, ["policy", "validate", str(default_policy_path()), str(bad)])
    assert result.exit_code == 1
    assert f"ok {default_policy_path()}" in result.stdout
    assert f"{bad}:3:15: slo.latency_ms" in result.output


def test_validate_with_zoo_refuses_a_variant_that_zoo_lacks_and_names_the_closest(tmp_path: Path) -> None:
    zoo = make_zoo(tmp_path / "zoo", {"small": (0.9, False), "large": (0.95, False)})
    path = tmp_path / "p.yaml"
    path.write_text(BASE + "allowed: {variants: [smal, large]}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["policy", "validate", "--zoo", str(zoo), str(path)])
    assert result.exit_code == 1, result.output
    assert f"ok {path}" not in result.stdout
    assert (
        f"{path}:4:22: allowed.variants[0]: unknown variant 'smal': not in the zoo (large, small); "
        "did you mean 'small'?" in result.output
    )
    path.write_text(BASE + "allowed: {variants: [small, large]}\n", encoding="utf-8")
    result = CliRunner().invoke(app, ["policy", "validate", "--zoo", str(zoo), str(path)])
    assert result.exit_code == 0, result.output
    assert f"ok {path}" in result.stdout
    # Without --zoo the names are checked against the shipped zoo, which has neither.
    result = CliRunner().invoke(app, ["policy", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:4:22: allowed.variants[0]: unknown variant 'small'" in result.output


def test_validate_with_a_zoo_without_manifest_is_a_usage_error_naming_it(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["policy", "validate", "--zoo", str(tmp_path), str(default_policy_path())])
    assert result.exit_code == 2
    assert "--zoo" in result.output and str(tmp_path / "manifest.json") in result.output
    assert "ok " not in result.stdout


def test_validate_without_a_zoo_at_hand_says_names_are_not_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("agent.paths.default_zoo_dir", lambda: tmp_path / "no-zoo")
    result = CliRunner().invoke(app, ["policy", "validate", str(BROKEN_DIR / "unknown-variant.yaml")])
    assert result.exit_code == 0, result.output
    assert "note: variant names not checked" in result.output and "--zoo DIR" in result.output


def test_schema_is_json_with_the_policy_sections() -> None:
    result = CliRunner().invoke(app, ["policy", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert set(schema["properties"]) == {"version", "slo", "accuracy", "allowed", "hysteresis", "rules"}
    assert set(schema["required"]) == {"version", "slo"}
    assert schema["additionalProperties"] is False
    assert schema["properties"]["version"]["const"] == 1


def test_reload_command_without_a_daemon_says_so_without_traceback(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["policy", "reload", "--socket", str(tmp_path / "none.sock")])
    assert result.exit_code == 1
    assert "cannot reach the daemon" in result.output
    assert "Traceback" not in result.output


# -- resolve ---------------------------------------------------------------------------------------


def _rule(when: str, then: str, name: str = "r") -> str:
    return f"  - name: {name}\n    when: {{{when}}}\n    then: {{{then}}}\n"


def _one_rule(when: str, then: str = "max_budget: 0.5") -> Policy:
    return _policy("rules:\n" + _rule(when, then))


@pytest.mark.parametrize(
    ("when", "snapshot", "holds"),
    [
        ("battery_below: 20", _snap(battery_percent=19.5), True),
        ("battery_below: 20", _snap(battery_percent=20), False),
        ("battery_below: 20", _snap(), False),
        ("on_battery: true", _snap(on_ac=False), True),
        ("on_battery: true", _snap(on_ac=True), False),
        ("on_battery: true", _snap(), False),
        ("on_battery: false", _snap(on_ac=True), True),
        ("on_battery: false", _snap(), False),
        ("temperature_above: 80", _snap(temperature_c=80.5), True),
        ("temperature_above: 80", _snap(temperature_c=80), False),
        ("temperature_above: 80", _snap(), False),
        ("cpu_above: 90", _snap(cpu_percent=95), True),
        ("cpu_above: 90", _snap(cpu_percent=50), False),
        ("cpu_above: 90", _snap(), False),
        ("load_above: 2", _snap(load_avg_1m=2.5), True),
        ("load_above: 2", _snap(load_avg_1m=1.0), False),
        ("load_above: 2", _snap(), False),
        ("battery_below: 20, on_battery: true", _snap(battery_percent=10, on_ac=False), True),
        ("battery_below: 20, on_battery: true", _snap(battery_percent=10, on_ac=True), False),
        ("battery_below: 20, on_battery: true", _snap(battery_percent=10), False),
    ],
)
def test_each_condition_holds_only_on_a_present_sensor_past_its_threshold(
    when: str, snapshot: Snapshot, holds: bool
) -> None:
    constraints = resolve(_one_rule(when), snapshot, NOON)
    assert constraints.rules == (("r",) if holds else ())
    assert constraints.budgets == ((0.5, 0.35, 0.25) if holds else (1.0, 0.7, 0.5, 0.35, 0.25))


@pytest.mark.parametrize(
    ("window", "now", "holds"),
    [
        ('"08:00", "18:00"', dt.time(8, 0), True),
        ('"08:00", "18:00"', dt.time(17, 59, 59), True),
        ('"08:00", "18:00"', dt.time(18, 0), False),
        ('"08:00", "18:00"', dt.time(7, 59), False),
        ('"22:00", "06:00"', dt.time(23, 30), True),
        ('"22:00", "06:00"', dt.time(0, 0), True),
        ('"22:00", "06:00"', dt.time(5, 59), True),
        ('"22:00", "06:00"', dt.time(6, 0), False),
        ('"22:00", "06:00"', dt.time(12, 0), False),
    ],
)
def test_time_between_is_start_inclusive_end_exclusive_and_wraps_midnight(
    window: str, now: dt.time, holds: bool
) -> None:
    assert resolve(_one_rule(f"time_between: [{window}]"), _snap(), now).rules == (("r",) if holds else ())


def test_no_matching_rule_leaves_the_base_policy() -> None:
    policy = _one_rule("temperature_above: 80")
    c = resolve(policy, _snap(temperature_c=40), NOON)
    assert (c.slo_ms, c.percentile, c.window_s, c.headroom) == (25, 95, 10, 0.9)
    assert (c.dwell_s, c.min_switch_interval_s) == (10, 1)
    assert c.variants is None and c.prefer is None and c.rules == () and c.notes == ()


def test_allow_variants_restricts_the_set() -> None:
    c = resolve(_one_rule("cpu_above: 50", "allow_variants: [int8, lowres]"), _snap(cpu_percent=60), NOON)
    assert c.variants == {"int8", "lowres"}


def test_max_budget_below_every_allowed_budget_keeps_the_smallest() -> None:
    policy = _policy("allowed:\n  budgets: [1.0, 0.7]\nrules:\n" + _rule("cpu_above: 50", "max_budget: 0.3"))
    c = resolve(policy, _snap(cpu_percent=60), NOON)
    assert c.budgets == (0.7,)
    assert c.notes


def test_slo_ms_sets_and_slo_scale_multiplies_the_objective() -> None:
    assert resolve(_one_rule("cpu_above: 50", "slo_ms: 40"), _snap(cpu_percent=60), NOON).slo_ms == 40
    assert resolve(_one_rule("cpu_above: 50", "slo_scale: 0.8"), _snap(cpu_percent=60), NOON).slo_ms == pytest.approx(
        20
    )
    assert resolve(_one_rule("cpu_above: 50", "slo_scale: 2"), _snap(cpu_percent=60), NOON).slo_ms == 50


def test_prefer_is_passed_on() -> None:
    assert resolve(_one_rule("cpu_above: 50", "prefer: int8"), _snap(cpu_percent=60), NOON).prefer == "int8"


def test_two_matching_rules_combine() -> None:
    policy = _policy(
        "rules:\n"
        + _rule("cpu_above: 50", "allow_variants: [int8, lowres, full], max_budget: 0.7, slo_ms: 30, prefer: int8", "a")
        + _rule(
            "temperature_above: 70",
            "allow_variants: [lowres, int8-lowres, int8], max_budget: 0.5, slo_scale: 0.5, prefer: lowres",
            "b",
        )
        + _rule("load_above: 100", "max_budget: 0.25", "never")
    )
    c = resolve(policy, _snap(cpu_percent=60, temperature_c=75, load_avg_1m=1), NOON)
    assert c.rules == ("a", "b")
    assert c.variants == {"int8", "lowres"}
    assert c.budgets == (0.5, 0.35, 0.25)
    assert c.slo_ms == pytest.approx(15)
    assert c.prefer == "int8"


def test_disjoint_variant_lists_fall_back_to_the_later_rule_with_a_note() -> None:
    policy = _policy(
        "rules:\n"
        + _rule("cpu_above: 50", "allow_variants: [full]", "a")
        + _rule("cpu_above: 60", "allow_variants: [int8]", "b")
    )
    c = resolve(policy, _snap(cpu_percent=70), NOON)
    assert c.variants == {"int8"}
    assert "rule 'b'" in c.notes[0]


def test_rule_variants_intersect_with_the_base_allowed_variants() -> None:
    policy = _policy(
        "allowed:\n  variants: [full, int8]\nrules:\n" + _rule("cpu_above: 50", "allow_variants: [int8, lowres]")
    )
    assert resolve(policy, _snap(cpu_percent=60), NOON).variants == {"int8"}
    assert resolve(policy, _snap(cpu_percent=10), NOON).variants == {"full", "int8"}


_conditions = st.fixed_dictionaries(
    {},
    optional={
        "battery_below": st.floats(1, 100),
        "on_battery": st.booleans(),
        "temperature_above": st.floats(-50, 200),
        "cpu_above": st.floats(0, 99),
        "load_above": st.floats(0, 64),
        "time_between": st.tuples(
            st.sampled_from(["00:00", "06:00", "12:30", "22:00"]), st.sampled_from(["01:00", "18:00", "23:59"])
        ),
    },
).filter(bool)
_actions = st.fixed_dictionaries(
    {},
    optional={
        "allow_variants": st.lists(st.sampled_from(ZOO_VARIANTS), min_size=1, max_size=5),
        "max_budget": st.floats(0.01, 1),
        "slo_ms": st.floats(0.1, 60_000),
        "slo_scale": st.floats(0.1, 10),
        "prefer": st.sampled_from(ZOO_VARIANTS),
    },
).filter(bool)
_policies = st.builds(
    lambda rules, budgets, latency: Policy.model_validate(
        {
            "version": 1,
            "slo": {"latency_ms": latency},
            "allowed": {"budgets": budgets},
            "rules": [{"name": f"r{i}", "when": w, "then": t} for i, (w, t) in enumerate(rules)],
        }
    ),
    st.lists(st.tuples(_conditions, _actions), max_size=6),
    st.lists(st.floats(0.01, 1), min_size=1, max_size=5),
    st.floats(0.1, 60_000),
)
_sensor = st.none() | st.floats(-20, 120)
_snapshots = st.builds(
    Snapshot,
    time=st.just(0.0),
    cpu_percent=_sensor,
    load_avg_1m=st.none() | st.floats(0, 32),
    temperature_c=_sensor,
    battery_percent=_sensor,
    on_ac=st.none() | st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(_policies, _snapshots, st.times())
def test_resolve_never_leaves_nothing_to_run_or_a_non_positive_slo(
    policy: Policy, snapshot: Snapshot, now: dt.time
) -> None:
    c = resolve(policy, snapshot, now)
    assert c.budgets and set(c.budgets) <= set(policy.allowed.budgets)
    assert list(c.budgets) == sorted(c.budgets, reverse=True)
    assert c.slo_ms > 0 and math.isfinite(c.slo_ms)
    assert c.variants is None or len(c.variants) > 0
    assert set(c.rules) <= {r.name for r in policy.rules}


# -- PolicyStore -----------------------------------------------------------------------------------


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(BASE, encoding="utf-8")
    return path


def test_store_loads_the_file_on_creation(policy_file: Path) -> None:
    store = PolicyStore(policy_file, FALLBACK_POLICY, clock=time.time)
    assert store.policy.slo.latency_ms == 25 and store.policy.slo.window_s == 10
    assert store.last_error is None and store.loaded_at is not None and store.source == str(policy_file)


def test_invalid_policy_keeps_last_good_and_reports_the_error(policy_file: Path) -> None:
    failures: list[str] = []
    store = PolicyStore(
        policy_file, FALLBACK_POLICY, on_failure=[lambda message, _code: failures.append(message)], clock=time.time
    )
    good = store.policy
    policy_file.write_text("version: 1\nslo:\n  latency_ms: -1\n", encoding="utf-8")
    with structlog.testing.capture_logs() as logs:
        result = store.reload()
    assert not result.ok and not result.changed
    assert result.error is not None and result.error.startswith(f"{policy_file}:3:15: slo.latency_ms")
    assert store.policy is good
    assert store.failures == 1 and store.last_error == result.error and failures == [result.error]
    assert any(e["event"] == "policy_reload_failed" and e["error"] == result.error for e in logs)
    assert store.status()["last_error"] == result.error


def test_valid_edit_is_picked_up_and_clears_the_error(policy_file: Path) -> None:
    store = PolicyStore(policy_file, FALLBACK_POLICY, clock=time.time)
    policy_file.write_text("not: [valid", encoding="utf-8")
    assert not store.reload().ok
    policy_file.write_text(BASE.replace("25", "40"), encoding="utf-8")
    result = store.reload()
    assert result.ok and result.changed and result.error is None
    assert store.policy.slo.latency_ms == 40 and store.last_error is None
    assert store.reload() == ReloadResult(ok=True, changed=False, error=None)


def test_changed_on_disk_detects_edit_and_deletion_once(policy_file: Path) -> None:
    store = PolicyStore(policy_file, FALLBACK_POLICY, clock=time.time)
    assert not store.changed_on_disk()
    policy_file.write_text(BASE + "hysteresis: {dwell_s: 3}\n", encoding="utf-8")
    assert store.changed_on_disk()
    assert store.reload().changed
    assert not store.changed_on_disk()
    policy_file.unlink()
    assert store.changed_on_disk()
    result = store.reload()
    assert not result.ok and "cannot read policy file" in (result.error or "")
    assert store.policy.hysteresis.dwell_s == 3
    assert not store.changed_on_disk()  # a missing file is reported once, not every second
    policy_file.write_text(BASE, encoding="utf-8")
    assert store.changed_on_disk()


def test_replacing_the_file_by_rename_is_a_change(policy_file: Path) -> None:
    store = PolicyStore(policy_file, FALLBACK_POLICY, clock=time.time)
    new = policy_file.with_name("policy.yaml.new")
    new.write_text(BASE, encoding="utf-8")
    new.replace(policy_file)  # same size and content, new inode: what editors and config tools do
    assert store.changed_on_disk()
    assert store.reload() == ReloadResult(ok=True, changed=False, error=None)


def test_store_with_broken_file_at_start_runs_on_the_default(tmp_path: Path) -> None:
    path = tmp_path / "p.yaml"
    path.write_bytes(b"")
    store = PolicyStore(path, FALLBACK_POLICY, clock=time.time)
    assert store.policy is FALLBACK_POLICY
    assert store.last_error == f"{path}: empty policy file" and store.source == "built-in default"


def test_store_without_a_file_keeps_the_default() -> None:
    store = PolicyStore(None, FALLBACK_POLICY, clock=time.time)
    assert store.reload().ok and not store.changed_on_disk() and store.policy is FALLBACK_POLICY


def test_store_refuses_a_variant_the_zoo_lacks_and_keeps_last_good(policy_file: Path) -> None:
    store = PolicyStore(policy_file, FALLBACK_POLICY, clock=time.time, known_variants=ZOO_VARIANTS)
    good = store.policy
    policy_file.write_text(BASE + "allowed: {variants: [int8_lowres]}\n", encoding="utf-8")
    result = store.reload()
    assert not result.ok and store.policy is good
    assert store.last_error == (
        f"{policy_file}:4:22: allowed.variants[0]: unknown variant 'int8_lowres': not in the zoo ({ZOO_LIST}); "
        "did you mean 'int8-lowres'?"
    )


# -- the daemon checks variant names against its zoo -------------------------------------------------


@pytest.mark.daemon
def test_daemon_refuses_a_policy_naming_a_variant_its_zoo_lacks_at_start_and_at_reload(tmp_path: Path) -> None:
    """At start the built-in policy runs instead, as for any invalid file; at reload (the
    admin route and the file watch alike) the last good policy stays in force. Status and the
    log say why, with the name the operator probably meant."""
    zoo = make_zoo(tmp_path / "zoo", {"a": (0.9, False), "b": (0.8, False)})
    path = tmp_path / "policy.yaml"
    text = "version: 1\nslo: {{latency_ms: {ms}}}\nallowed: {{variants: [a, {name}]}}\n"
    path.write_text(text.format(ms=40, name="bb"))
    d = DaemonProcess(
        tmp_path / "d",
        args=["--zoo", str(zoo), "--policy", str(path)],
        env={"EDGE_AGENT_WARMUP_RUNS": "1", "EDGE_AGENT_POLICY_WATCH_S": "0.2"},
    ).start()
    why = f"{path}:3:25: allowed.variants[1]: unknown variant 'bb': not in the zoo (a, b); did you mean 'b'?"
    try:
        with d.client() as c:
            policy = c.status()["policy"]
            assert policy["source"] == "built-in default" and policy["last_error"] == why
            assert '"policy_invalid_at_start"' in d.log()

            path.write_text(text.format(ms=40, name="b"))
            assert c.reload()["reloaded"] is True
            eventually(lambda: c.status()["slo"]["latency_ms"] == 40, 10, "the good policy is in force")
            kept = c.status()["policy"]
            assert kept["source"] == str(path) and kept["last_error"] is None

            path.write_text(text.format(ms=33, name="bb"))
            answer = c.reload()
            assert answer["reloaded"] is False and answer["error"] == why
            status = c.status()
            assert status["policy"]["digest"] == kept["digest"] and status["slo"]["latency_ms"] == 40
            assert status["policy"]["last_error"] == why
        refused = [json.loads(line) for line in d.log().splitlines() if '"policy_reload_failed"' in line]
        assert refused and refused[-1]["error"] == why and refused[-1]["kept"] == str(path)
    finally:
        assert d.stop() == 0
