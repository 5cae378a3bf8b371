"""Values several layers share: the configuration in force, a pin, a switch, the token budgets.

A leaf: it imports nothing of the agent but `agent.errors`, so the pure controller, the policy,
the runner and the CLI can all name a `Config` without pulling in what serves one.
"""

from __future__ import annotations

from dataclasses import dataclass

from agent.errors import BadInput

#: The token budgets the zoo is built and profiled for, largest first (the policy's default set).
BUDGETS: tuple[float, ...] = (1.0, 0.7, 0.5, 0.35, 0.25)


@dataclass(frozen=True, order=True)
class Config:
    """A configuration the daemon can serve: a variant and its token budget."""

    variant: str
    budget: float

    def __str__(self) -> str:
        return f"{self.variant}@{self.budget:g}"

    @classmethod
    def parse(cls, text: str) -> Config:
        """`int8@0.5`, or `int8` for budget 1.0."""
        name, _, budget = text.partition("@")
        try:
            value = float(budget) if budget else 1.0
        except ValueError:
            raise BadInput(f"invalid configuration {text!r}: budget must be a number, as in int8@0.5") from None
        if not name or not 0 < value <= 1:
            raise BadInput(f"invalid configuration {text!r}: expected VARIANT@BUDGET with 0 < BUDGET <= 1")
        return cls(name, value)


@dataclass(frozen=True)
class Switch:
    """One change of the configuration in force, for status and the switch callbacks."""

    at: float  # wall clock
    old: str
    new: str
    reason: str


@dataclass(frozen=True)
class Pin:
    """A configuration held for maintenance until `until` (wall clock: for status and pin.json,
    which must outlive the process; while the daemon runs, the runner times it monotonically)."""

    config: Config
    until: float
    reason: str
