"""What is wrong with a policy file, in the words an operator needs: `FILE:LINE:COL: path: message`.

Two sources of problems, each turned into located, one-line messages:
- a YAML error from PyYAML (syntax, indentation): its `problem_mark` gives the place, and the
  library's wording ("expected <block end>, but found '<block mapping start>'") is replaced by
  what it means for a hand-edited file, with a one-line hint;
- a pydantic `ValidationError`: every error of the file, placed by walking the YAML node tree
  along the error's location. A misspelt or misplaced key shows up in pydantic twice, as an
  unknown key where it is and (for a required field) as a missing field where it should be;
  the unknown key is the cause, so it comes first and the missing field points back at it. A
  key the format knows at another level is named as misplaced, not as a spelling mistake.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from typing import Any, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from agent.policy.schema import RULE_NAME_PATTERN, VARIANT_PATTERN, Policy

_PATTERN_HINTS = {
    VARIANT_PATTERN: "not a variant name: lowercase letters, digits, '.', '_' and '-', e.g. int8-lowres",
    RULE_NAME_PATTERN: "not a rule name: letters, digits, spaces, '.', '_', ':' and '-', starting with a letter or digit",
}
_ITEM = "[]"  # a list item in a schema place, e.g. ("rules", "[]", "when")
_Loc = tuple[int | str, ...]


def at(source: str, mark: Any) -> str:
    """`FILE:LINE:COL` (1-based) for a PyYAML mark, or just `FILE` without one."""
    return f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source


# -- YAML syntax ------------------------------------------------------------------------------------


def _where(mark: Any) -> str:
    return f"line {mark.line + 1}, column {mark.column + 1}"


def _yaml_words(exc: yaml.MarkedYAMLError) -> tuple[str, str]:
    """(what is wrong, one-line hint) for the PyYAML problems a hand edit runs into; the
    library's own text, with a general hint, for the rest."""
    problem, context = " ".join((exc.problem or "").split()), exc.context or ""
    opened = exc.context_mark
    if "'\\t'" in problem:
        return "a tab character", "YAML indents with spaces only: replace the tab with spaces"
    if "that cannot start any token" in problem:
        char = problem.split("'")[1] if problem.count("'") >= 2 else "this character"
        return f"a value cannot start with {char}", "put the value in quotes"
    if problem == "mapping values are not allowed here":
        return (
            "a 'key:' where a value was expected",
            "indent this line like the keys beside it; check that the key on the line above ends in ': ' "
            "(colon, space); quote a value that contains ': '",
        )
    if problem.startswith("expected <block end>, but found"):
        found = problem.rsplit("but found ", 1)[1]
        if found == "'-'":
            return (
                "a list item ('- ') among the keys of a mapping",
                "indent the list under the key it belongs to, or remove the '-'",
            )
        if found in ("'}'", "']'"):
            return (
                f"a {found} that closes nothing",
                f"remove it, or add the opening {'{' if found == repr('}') else '['}",
            )
        return (
            "this line's indentation matches none of the keys or list items above it",
            "keys of one mapping, and items of one list, must start in the same column",
        )
    if problem.startswith(("expected ',' or '}'", "expected ',' or ']'")):
        bracket = "{" if "flow mapping" in context else "["
        close = "}" if bracket == "{" else "]"
        where = f" at {_where(opened)}" if opened is not None else ""
        return (
            f"the '{bracket}'{where} is not closed",
            f"close it with '{close}' and separate its items with ', '",
        )
    if problem == "found unexpected end of stream" and "quoted scalar" in context:
        where = f" at {_where(opened)}" if opened is not None else ""
        return f"the quote{where} is never closed", "end the value with the same quote character it starts with"
    if problem == "could not find expected ':'":
        where = f"line {opened.line + 1}" if opened is not None else "a line"
        return f"{where} has no ':' after its key", "write 'key: value', or join the line to the value above it"
    if "unknown escape character" in problem:
        return problem.removeprefix("found "), "in double quotes '\\' starts an escape: use single quotes instead"
    if context.startswith("expected a single document"):
        return "a second YAML document ('---')", "a policy file holds one document: remove the '---' and what follows"
    what = f"{context}: {problem}" if context and problem and context != problem else problem or context
    return what or "invalid YAML", "check the indentation (spaces only) and the quoting around this place"


def yaml_problem(source: str, exc: yaml.MarkedYAMLError) -> str:
    """One line, at PyYAML's problem mark: `FILE:LINE:COL: invalid YAML: what; hint: how`. Our
    own constructor errors (duplicate keys) already say what to do and get no second hint."""
    if isinstance(exc, yaml.constructor.ConstructorError) and exc.context is None:
        return f"{at(source, exc.problem_mark)}: invalid YAML: {' '.join((exc.problem or '').split())}"
    what, hint = _yaml_words(exc)
    return f"{at(source, exc.problem_mark or exc.context_mark)}: invalid YAML: {what}; hint: {hint}"


# -- where each key of the format belongs -----------------------------------------------------------


def _nested(annotation: Any) -> list[tuple[type[BaseModel], bool]]:
    """The models a field holds, each with whether it is held in a list."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    listed = get_origin(annotation) is list
    return [(model, listed or inner) for arg in get_args(annotation) for model, inner in _nested(arg)]


def _places(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> Iterator[tuple[str, tuple[str, ...]]]:
    for name, field in model.model_fields.items():
        yield name, prefix
        for sub, listed in _nested(field.annotation):
            yield from _places(sub, (*prefix, name, *((_ITEM,) if listed else ())))


#: Every key of the policy format and the places (parent paths) it is valid in.
PLACES: dict[str, list[tuple[str, ...]]] = {}
for _name, _place in _places(Policy):
    PLACES.setdefault(_name, []).append(_place)


def _model_at(loc: _Loc) -> type[BaseModel] | None:
    """The schema model of the mapping at `loc` (list indices skipped), None where there is none."""
    model: type[BaseModel] = Policy
    for part in loc:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(part)
        nested = _nested(field.annotation) if field is not None else []
        if not nested:
            return None
        model = nested[0][0]
    return model


def dotted(loc: _Loc) -> str:
    """`rules[0].then.prefer` for a pydantic location."""
    return ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")


def _render_place(place: tuple[str, ...], loc: _Loc) -> str:
    """A schema place as the operator would write it, taking list indices from `loc` where the
    misplaced key sits inside the same list item (`rules[2].when:`), else `rules[].when:`."""
    if not place:
        return "at the top level"
    parts: list[int | str] = []
    for i, part in enumerate(place):
        index = loc[i] if i < len(loc) else None
        parts.append(index if part == _ITEM and isinstance(index, int) else part)
    text = dotted(tuple(parts))
    if text.endswith("[]"):
        return f"directly in each item of `{text.removesuffix('[]')}:`"
    return f"directly in `{text}`" if place[-1] == _ITEM else f"under `{text}:`"


def _unknown_key(loc: _Loc) -> str:
    key = str(loc[-1])
    here = _model_at(loc[:-1])
    valid_here = list(here.model_fields) if here is not None else []
    if key in PLACES:
        where = " or ".join(_render_place(place, loc) for place in PLACES[key])
        return f"not valid here; `{key}` belongs {where}"
    close = difflib.get_close_matches(key, valid_here, n=1)
    if close:
        return f"unknown key {key!r}; did you mean {close[0]!r}?"
    anywhere = difflib.get_close_matches(key, list(PLACES), n=1)
    if anywhere:
        where = " or ".join(_render_place(place, loc) for place in PLACES[anywhere[0]])
        return f"unknown key {key!r}; did you mean {anywhere[0]!r} ({where})?"
    # A key that resembles none of the format's is not echoed: the file may not be a policy at
    # all (a path pointed at another file), and its first line must not reach a log or a status.
    return f"unknown key (like no key of the format, so not repeated here); valid keys here: {', '.join(valid_here)}"


def _explains(extra: _Loc, missing: _Loc) -> bool:
    """Does the unknown key at `extra` account for the required field missing at `missing`: the
    same name elsewhere or a key of the missing mapping (misplaced), or a close spelling in the
    same mapping (misspelt)?"""
    name, key = str(missing[-1]), str(extra[-1])
    if key == name or tuple(_ITEM if isinstance(p, int) else p for p in missing) in PLACES.get(key, []):
        return True
    return extra[:-1] == missing[:-1] and bool(difflib.get_close_matches(key, [name], n=1))


# -- pydantic errors --------------------------------------------------------------------------------


def _walk(node: Node, loc: _Loc) -> tuple[Node, bool]:
    """The node a pydantic error location points at; (node, exact) where exact is False when
    the walk stopped early (e.g. a missing key points at its parent mapping)."""
    for part in loc:
        if isinstance(node, MappingNode):
            for key_node, value_node in node.value:
                if isinstance(key_node, ScalarNode) and key_node.value == str(part):
                    node = value_node
                    break
            else:
                return node, False
        elif isinstance(node, SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            node = node.value[part]
        else:
            return node, False
    return node, True


def node_at(root: Node, loc: _Loc) -> Node:
    """The node at `loc`, or the deepest one on the way (a missing key: its parent mapping)."""
    return _walk(root, loc)[0]


def _key_node(node: Node, key: str) -> Node | None:
    if isinstance(node, MappingNode):
        for key_node, _ in node.value:
            if isinstance(key_node, ScalarNode) and key_node.value == key:
                return key_node
    return None


def _problem(error: ErrorDetails, root: Node, source: str, unknown: dict[_Loc, Node]) -> str:
    loc = tuple(error["loc"])
    message = error["msg"].removeprefix("Value error, ")
    node, exact = _walk(root, loc)
    shown = loc
    if error["type"] == "extra_forbidden" and loc:
        node = unknown[loc]
        message = _unknown_key(loc)
        if "not repeated" in message:
            shown = loc[:-1]
    elif error["type"] == "missing":
        message = "missing required field"
        cause = next((extra for extra in unknown if _explains(extra, loc)), None)
        if cause is not None:
            message += f" (see {dotted(cause)} at line {unknown[cause].start_mark.line + 1})"
    elif error["type"] == "string_pattern_mismatch":
        message = _PATTERN_HINTS.get(str(error.get("ctx", {}).get("pattern")), message)
    if (
        error["type"] not in ("missing", "extra_forbidden")
        and exact
        and isinstance(node, ScalarNode)
        and repr(node.value) not in message
    ):
        message = f"{message} (got {node.value!r})"
    return f"{at(source, node.start_mark)}: {dotted(shown) or '(top level)'}: {message}"


def validation_problems(exc: ValidationError, root: Node, source: str) -> list[str]:
    """Every error of the file, one line each: unknown and misplaced keys first (they are what
    the operator typed wrong, and often why a field is missing), the rest in pydantic's order."""
    errors = exc.errors()
    unknown: dict[_Loc, Node] = {}
    for error in errors:
        loc = tuple(error["loc"])
        if error["type"] == "extra_forbidden" and loc:
            parent = node_at(root, loc[:-1])
            unknown[loc] = _key_node(parent, str(loc[-1])) or parent
    ordered = sorted(errors, key=lambda e: e["type"] != "extra_forbidden")
    return [_problem(error, root, source, unknown) for error in ordered]
