"""Reading a policy file safely and saying exactly what is wrong with it.

The file is operator input, so parsing is defensive, in this order: a size limit before any
parsing; strict UTF-8; a pass over the YAML *events* (no objects built yet) that refuses
anchors/aliases (billion laughs), tags (`!!python/object`, `!include`), and nesting deeper
than a small limit; then the node tree is composed and constructed with PyYAML's safe
constructor, refusing duplicate keys; then pydantic validates, against a zoo's variant names
when the caller has a zoo. Each problem is reported as `FILE:LINE:COL: field.path: message`
(`agent.policy.problems` words and places them). Nothing is ever `eval`-ed.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node

from agent.errors import AgentError
from agent.policy.problems import at, node_at, validation_problems, yaml_problem
from agent.policy.schema import KNOWN_VARIANTS, SUPPORTED_VERSIONS, Policy

MAX_BYTES = 64 * 1024
MAX_DEPTH = 16
#: Explicit tags that can only mean what the plain YAML would (`!!int`, `!!bool` are left out: a bad
#: value under them fails inside PyYAML with a bare ValueError/KeyError instead of a marked error).
_ALLOWED_TAGS = {f"tag:yaml.org,2002:{name}" for name in ("str", "null", "seq", "map")}


class PolicyError(AgentError):
    """The policy file is unusable. `problems` is every problem found, one line each
    (`FILE:LINE:COL: path: msg`), the likely cause first; `message` is all of them, one a line,
    so status and logs hide none."""

    code = "invalid_policy"
    status = 422

    def __init__(self, message: str, problems: tuple[str, ...] = ()) -> None:
        self.problems = problems or (message,)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class FileIdentity:
    """What `changed_on_disk` compares: the same inode, size and mtime means the same content."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, st: os.stat_result) -> FileIdentity:
        return cls(st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


# -- YAML: a loader with boring scalars -------------------------------------------------------------


class _PolicyLoader(yaml.SafeLoader):
    """SafeLoader without YAML 1.1's surprises: `18:30` stays a string (not 1110, base 60),
    dates stay strings, no `<<` merge keys, no octal; and duplicate keys are an error."""

    yaml_implicit_resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]] = {}  # noqa: RUF012

    def construct_mapping(self, node: Node, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, MappingNode):
            seen: dict[Any, Node] = {}
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, str | int | float | bool) and key in seen:
                    first = seen[key].start_mark
                    raise ConstructorError(
                        None,
                        None,
                        f"duplicate key {key!r} (first at line {first.line + 1}); each key may appear once",
                        key_node.start_mark,
                    )
                if isinstance(key, str | int | float | bool):
                    seen[key] = key_node
        return super().construct_mapping(node, deep=deep)  # type: ignore[arg-type]


_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:yes|Yes|YES|no|No|NO|true|True|TRUE|false|False|FALSE|on|On|ON|off|Off|OFF)$"),
    list("yYnNtTfFoO"),
)
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:null", re.compile(r"^(?:~|null|Null|NULL|)$"), ["~", "n", "N", ""]
)
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:int", re.compile(r"^[-+]?(?:0|[1-9][0-9_]*)$"), list("-+0123456789")
)
_PolicyLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


# -- errors with a place ----------------------------------------------------------------------------


def _fail(source: str, mark: Any, what: str) -> PolicyError:
    return PolicyError(f"{at(source, mark)}: {what}")


def _yaml_error(source: str, text: str, exc: yaml.YAMLError) -> PolicyError:
    if isinstance(exc, yaml.reader.ReaderError):
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return PolicyError(f"{source}:{line}:{column}: character U+{ord(char):04X} is not allowed in YAML text")
    if isinstance(exc, yaml.MarkedYAMLError):
        return PolicyError(yaml_problem(source, exc))
    return PolicyError(f"{source}: invalid YAML: {exc}")


def _decode(data: bytes, source: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise PolicyError(
            f"{source}:{line}:{column}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start});"
            " a policy file must be UTF-8 YAML"
        ) from None
    return text.removeprefix("\ufeff")


def _check_events(text: str, source: str) -> None:
    """Refuse what must never reach the constructor, looking only at parser events, so a
    billion-laughs file or a 10,000-deep list costs a few events, not memory or recursion."""
    depth = 0
    for event in yaml.parse(text, Loader=_PolicyLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _fail(source, event.start_mark, "anchors and aliases (&name, *name) are not allowed in a policy file")
        tag = getattr(event, "tag", None)
        if tag is not None and tag not in _ALLOWED_TAGS:
            raise _fail(source, event.start_mark, f"YAML tag {tag!r} is not allowed in a policy file")
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise _fail(source, event.start_mark, f"nesting deeper than {MAX_DEPTH} levels")
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _compose(text: str, source: str) -> tuple[Node, Any]:
    loader = _PolicyLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            raise PolicyError(f"{source}: empty policy file (no YAML document, only comments or blank lines)")
        data = loader.construct_document(node)
    finally:
        loader.dispose()
    return node, data


def _check_version(root: Node, data: Any, source: str) -> None:
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else "a string" if isinstance(data, str) else type(data).__name__
        raise _fail(source, root.start_mark, f"the top level must be a mapping (version:, slo:, ...), got {kind}")
    version = data.get("version")
    if "version" in data and not (type(version) is int and version in SUPPORTED_VERSIONS):
        node = node_at(root, ("version",))
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise _fail(
            source,
            node.start_mark,
            f"version: unsupported policy version {_version_text(version)}; this edge-agent supports version {supported}",
        )


def _version_text(version: Any) -> str:
    """A version as an error shows it: a number, or a short string of digits; anything else is
    not echoed (the file may be another file, and its text must not reach a log or a status)."""
    if type(version) in (int, float) or (isinstance(version, str) and version.isdigit() and len(version) <= 4):
        return repr(version)
    return f"(a {type(version).__name__}, not repeated here)"


# -- public -----------------------------------------------------------------------------------------


def parse_policy(text: str | bytes, source: str = "<policy>", known_variants: Collection[str] | None = None) -> Policy:
    """Validate a policy document; raise PolicyError naming `source`, the line and the field of
    every problem. With `known_variants` (a zoo's), a variant name outside them is a problem too."""
    data_bytes = text if isinstance(text, bytes) else text.encode("utf-8", "surrogatepass")
    if len(data_bytes) > MAX_BYTES:
        raise PolicyError(f"{source}: policy file is {len(data_bytes)} bytes, over the {MAX_BYTES // 1024} KiB limit")
    if isinstance(text, bytes):
        text = _decode(text, source)
    if not text.strip():
        raise PolicyError(f"{source}: empty policy file")
    try:
        _check_events(text, source)
        root, data = _compose(text, source)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, text, exc) from None
    except RecursionError:  # unreachable with MAX_DEPTH; kept so no input can produce a traceback
        raise PolicyError(f"{source}: nesting too deep") from None
    _check_version(root, data, source)
    context = {KNOWN_VARIANTS: frozenset(known_variants)} if known_variants is not None else None
    try:
        return Policy.model_validate(data, context=context)
    except ValidationError as exc:
        problems = validation_problems(exc, root, source)
        raise PolicyError(problems[0], tuple(problems)) from None


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def read_policy_file(
    path: Path,
    known_variants: Collection[str] | None = None,
    check: Callable[[Path, bytes], None] | None = None,
) -> tuple[Policy, FileIdentity]:
    """Read and validate `path` (against `known_variants` when given); also return the identity
    of what was read, for reload checks. Opens without blocking (a FIFO must not hang the
    daemon) and reads at most the limit. `check` (the daemon's signature check) is given the
    bytes read before they are parsed, and raises to refuse them: what is checked is what is used."""
    source = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read policy file: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PolicyError(f"{source}: not a regular file")
        if st.st_size > MAX_BYTES:
            raise PolicyError(f"{source}: policy file is {st.st_size} bytes, over the {MAX_BYTES // 1024} KiB limit")
        data = _read_at_most(fd, MAX_BYTES + 1)  # a file growing after fstat is still cut at the limit
    except OSError as exc:
        raise PolicyError(f"{source}: cannot read policy file: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    if check is not None:
        check(path, data)
    return parse_policy(data, source, known_variants), FileIdentity.of(st)


def load_policy(path: Path, known_variants: Collection[str] | None = None) -> Policy:
    """Read and validate a policy file (against a zoo's `known_variants` when given);
    PolicyError says where and what is wrong."""
    return read_policy_file(path, known_variants)[0]
