"""The policy file's schema: pydantic models an operator's YAML is validated against.

Every model forbids unknown keys (a typo must not be silently ignored) and is frozen (the
policy in force is shared by the controller, the server and the file-watch job). The JSON
Schema of `Policy` is published by `edge-agent policy schema` for editors.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from agent.values import BUDGETS

#: Policy file versions this build understands; a newer file is refused, not half-read.
SUPPORTED_VERSIONS: tuple[int, ...] = (1,)

VARIANT_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,63}$"
RULE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9 _.:-]*$"
_TIME = re.compile(r"^([01]?[0-9]|2[0-3]):([0-5][0-9])$")


def _clock_time(value: str) -> str:
    """Accept "H:MM" or "HH:MM" (24 h, local time) and normalise to "HH:MM"."""
    match = _TIME.match(value)
    if not match:
        raise ValueError(f'expected a local time "HH:MM" between 00:00 and 23:59, got {value!r}')
    return f"{int(match.group(1)):02d}:{match.group(2)}"


#: Validation context key: the variant names of the zoo the policy is checked against.
KNOWN_VARIANTS = "known_variants"


def _known_variant(value: str, info: ValidationInfo) -> str:
    """With a zoo to check against (the `known_variants` context), a name it lacks is an error,
    with the closest known name suggested: `int8_lowres` must not pass for `int8-lowres`."""
    known = (info.context or {}).get(KNOWN_VARIANTS)
    if known is None or value in known:
        return value
    close = difflib.get_close_matches(value, sorted(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown variant {value!r}: not in the zoo ({', '.join(sorted(known))}){hint}")


VariantName = Annotated[
    str,
    StringConstraints(pattern=VARIANT_PATTERN),
    AfterValidator(_known_variant),
    Field(description="A variant of the model zoo, e.g. full, pruned, int8, lowres, int8-lowres"),
]
Budget = Annotated[float, Field(gt=0, le=1, description="Share of patch tokens kept, in (0, 1]")]
ClockTime = Annotated[str, AfterValidator(_clock_time)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


class Slo(_Strict):
    """The latency objective the controller keeps: `percentile` of request latency over the last
    `window_s` seconds must stay under `latency_ms`; configurations are chosen so that their
    predicted latency is under `headroom` x `latency_ms`, leaving a margin for noise."""

    percentile: float = Field(default=95.0, ge=50, le=99.9, description="Latency percentile the SLO is on, 50-99.9")
    latency_ms: float = Field(gt=0, le=60_000, description="Latency objective in milliseconds")
    window_s: float = Field(default=10.0, gt=0, le=3600, description="Window the percentile is measured over, seconds")
    headroom: float = Field(
        default=0.9, gt=0, le=1, description="Plan for headroom x latency_ms, in (0, 1]; lower is safer"
    )


class Allowed(_Strict):
    """The configurations the controller may choose from before any rule applies."""

    variants: list[VariantName] | None = Field(
        default=None, min_length=1, max_length=64, description="Allowed variants; omit for every loaded variant"
    )
    budgets: list[Budget] = Field(
        default=list(BUDGETS), min_length=1, max_length=32, description="Allowed token budgets"
    )

    @field_validator("budgets")
    @classmethod
    def _descending(cls, value: list[float]) -> list[float]:
        return sorted(set(value), reverse=True)


class Hysteresis(_Strict):
    """Damping: step down at once on a violation, step up only after `dwell_s` seconds of
    comfortable latency, and never switch more often than every `min_switch_interval_s`."""

    dwell_s: float = Field(default=10.0, ge=0, le=3600, description="Seconds of headroom before stepping up")
    min_switch_interval_s: float = Field(default=1.0, ge=0, le=3600, description="Least seconds between two switches")


class Condition(_Strict):
    """When a rule applies: every condition given must hold. A condition on a sensor the device
    does not have (or could not read) does not hold, so a rule never fires on missing data."""

    battery_below: float | None = Field(default=None, gt=0, le=100, description="Battery charge below this, percent")
    on_battery: bool | None = Field(
        default=None, description="true: running on battery (not on AC); false: on AC power"
    )
    temperature_above: float | None = Field(
        default=None, ge=-50, le=200, description="Hottest CPU/SoC sensor above this, degrees Celsius"
    )
    cpu_above: float | None = Field(default=None, ge=0, lt=100, description="Total CPU use above this, percent")
    load_above: float | None = Field(default=None, ge=0, le=1024, description="1-minute load average above this")
    time_between: tuple[ClockTime, ClockTime] | None = Field(
        default=None,
        description='Local time in [start, end), as ["HH:MM", "HH:MM"]; may wrap midnight, e.g. ["22:00", "06:00"]',
    )

    @model_validator(mode="after")
    def _some_condition(self) -> Condition:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a rule needs at least one condition in `when`: " + ", ".join(type(self).model_fields))
        if self.time_between is not None and self.time_between[0] == self.time_between[1]:
            raise ValueError("time_between: start and end are equal; give a non-empty range")
        return self


class Action(_Strict):
    """What a matching rule does to the allowed set and the SLO."""

    allow_variants: list[VariantName] | None = Field(
        default=None, min_length=1, max_length=64, description="Only these variants (intersected across rules)"
    )
    max_budget: Budget | None = Field(default=None, description="Cap the token budget (smallest cap wins)")
    slo_ms: float | None = Field(
        default=None, gt=0, le=60_000, description="Set the latency objective, ms (smallest set wins)"
    )
    slo_scale: float | None = Field(
        default=None, ge=0.1, le=10, description="Multiply the latency objective: < 1 tightens, > 1 relaxes"
    )
    prefer: VariantName | None = Field(
        default=None,
        description="Choose this variant whenever it is predicted to meet the SLO, even over more accurate ones",
    )

    @model_validator(mode="after")
    def _some_action(self) -> Action:
        if all(getattr(self, name) is None for name in type(self).model_fields):
            raise ValueError("a rule needs at least one action in `then`: " + ", ".join(type(self).model_fields))
        return self


class Rule(_Strict):
    """`when` the device is in some state, `then` narrow the choice or change the SLO."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=RULE_NAME_PATTERN)] = Field(
        description="Shown in status, logs and decision reasons"
    )
    when: Condition
    then: Action


class Policy(_Strict):
    """An operator's policy: the SLO, what may be chosen, damping, and rules for device states."""

    model_config = ConfigDict(
        title="edge-agent policy", json_schema_extra={"$schema": "https://json-schema.org/draft/2020-12/schema"}
    )

    version: Literal[1] = Field(description="Policy file format version; this build supports 1")
    slo: Slo
    accuracy: Literal["test", "shifted", "site"] = Field(
        default="test",
        description="Accuracy table configurations are ranked by: test (the zoo's), shifted (the zoo's robustness "
        "split) or site (measured on this gateway by `edge-agent zoo eval --data DIR --save`; test until one exists)",
    )
    allowed: Allowed = Field(default_factory=Allowed)
    hysteresis: Hysteresis = Field(default_factory=Hysteresis)
    rules: list[Rule] = Field(default_factory=list, max_length=64, description="Checked in file order")

    @field_validator("rules")
    @classmethod
    def _unique_names(cls, rules: list[Rule]) -> list[Rule]:
        seen: dict[str, int] = {}
        for index, rule in enumerate(rules):
            if rule.name in seen:
                raise ValueError(f"rule name {rule.name!r} is used by rules {seen[rule.name]} and {index}")
            seen[rule.name] = index
        return rules


#: Used when no policy file can be read at all: the shipped default's SLO, no rules.
FALLBACK_POLICY = Policy(
    version=1,
    slo=Slo(percentile=95, latency_ms=25, window_s=5, headroom=0.85),
    hysteresis=Hysteresis(dwell_s=5, min_switch_interval_s=1),
)


def policy_warnings(policy: Policy) -> list[str]:
    """Legal but probably unintended: budgets the zoo is not profiled for, a rule whose variants
    can never meet the base allow list. (A variant name the zoo lacks is an error when validating
    against a zoo: see `KNOWN_VARIANTS`.)"""
    warnings = []
    for budget in policy.allowed.budgets:
        if not any(abs(budget - b) < 1e-9 for b in BUDGETS):
            warnings.append(
                f"budget {budget:g} is not one the zoo is profiled for ({', '.join(f'{b:g}' for b in BUDGETS)})"
            )
    base = set(policy.allowed.variants) if policy.allowed.variants else None
    for rule in policy.rules:
        own = set(rule.then.allow_variants or ())
        if base is not None and own and not own & base:
            warnings.append(
                f"rule {rule.name!r}: allow_variants shares nothing with allowed.variants; it replaces them"
            )
        if rule.then.prefer and own and rule.then.prefer not in own:
            warnings.append(f"rule {rule.name!r}: prefers {rule.then.prefer!r}, which its allow_variants excludes")
    return warnings
