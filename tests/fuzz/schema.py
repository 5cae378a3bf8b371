"""Schema-driven cases: hypothesis strategies built from the daemon's own OpenAPI schema, for
every route: right and wrong methods, path parameters, query parameters of right and wrong
types, and bodies (random bytes, JSON from the body models, real images) under random
content types. Every request is well-formed HTTP, so the app owes each one a JSON answer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import numpy as np
from hypothesis import strategies as st

from agent.serving.api import PinRequest, V2InferRequest
from agent.zoo.manifest import load_manifest
from tests.fuzz.payloads import IMAGE_KINDS, npy_array, sample_image
from tests.fuzz.wire import Case, http_request, path_segment

METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]
#: Routes that read a raw JSON body, so FastAPI's schema has no requestBody for them.
BODY_MODELS: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v2/models/{name}/infer"): V2InferRequest.model_json_schema(),
    ("POST", "/v1/pin"): PinRequest.model_json_schema(),
}
CONTENT_TYPES = [
    "application/json",
    "application/x-npy",
    "application/npy",
    "application/octet-stream",
    "image/png",
    "image/jpeg",
    "IMAGE/PNG",
    "image/png; charset=binary",
    "image/gif",
    "image/svg+xml",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/x-www-form-urlencoded",
    "*/*",
    ";",
    "image/",
    "",
]
ODD_SCALARS = [
    "",
    "nan",
    "NaN",
    "inf",
    "-inf",
    "Infinity",
    "-1",
    "-0",
    "0",
    "0.0",
    "1e-320",
    "1e309",
    "600000",
    "600000.0001",
    "1" * 5000,
    "true",
    "false",
    "yes",
    "null",
    "None",
    "[]",
    "{}",
    "%00",
    "\x00",
    "\u202e",
    "1_000",
    "0x10",
    " 1",
]
HEADER_SCALARS = [s for s in ODD_SCALARS if s.isascii() and s.isprintable()]
PATH_ODDITIES = ["", ".", "..", "%", "%00", "a/b", "\x00", "\u00fc", "../../etc/passwd", "a" * 5000, "models", " "]
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
ANY_JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


@dataclass(frozen=True)
class Operation:
    method: str
    path: str
    params: list[dict[str, Any]] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    body_schema: dict[str, Any] | None = None


@dataclass(frozen=True)
class Target:
    """What the fuzzer learns from the running daemon: its schema and its v2 models (name -> input side)."""

    schema: dict[str, Any]
    models: dict[str, int]
    adaptive: str = ""

    @property
    def operations(self) -> list[Operation]:
        ops = []
        for path, methods in sorted(self.schema["paths"].items()):
            for method, op in sorted(methods.items()):
                content = list(op.get("requestBody", {}).get("content", {}))
                ops.append(
                    Operation(
                        method.upper(), path, op.get("parameters", []), content, BODY_MODELS.get((method.upper(), path))
                    )
                )
        return ops


def discover(sock_path: Path) -> Target:
    """The schema (GET /openapi.json) and the models (variants, plus the adaptive model named in the zoo's manifest)."""
    transport = httpx.HTTPTransport(uds=str(sock_path))
    with httpx.Client(transport=transport, base_url="http://edge-agent", timeout=30) as http:
        schema = http.get("/openapi.json").raise_for_status().json()
        status = http.get("/v1/status").raise_for_status().json()
    models = {name: v["resolution"] for name, v in status["variants"].items()}
    adaptive = load_manifest(Path(status["zoo"]) / "manifest.json").name
    models[adaptive] = max(models.values())
    return Target(schema, models, adaptive)


def from_schema(schema: dict[str, Any], defs: dict[str, Any], depth: int = 0) -> st.SearchStrategy[Any]:
    """Values for a JSON schema, a quarter of them anything at all (wrong types); objects may
    lose required keys or gain unknown ones, arrays may be too long."""
    if depth > 4:
        return ANY_JSON
    if "$ref" in schema:
        return from_schema(defs[schema["$ref"].rsplit("/", 1)[-1]], defs, depth)
    if "anyOf" in schema:
        return st.one_of(*[from_schema(s, defs, depth) for s in schema["anyOf"]])
    kind = schema.get("type")
    valid: st.SearchStrategy[Any]
    if kind == "object":
        props = {k: from_schema(v, defs, depth + 1) for k, v in schema.get("properties", {}).items()}
        required = {k: props[k] for k in schema.get("required", []) if k in props}
        optional = {k: s for k, s in props.items() if k not in required}
        full = st.fixed_dictionaries(required, optional=optional)
        extra = st.dictionaries(st.text(max_size=10), ANY_JSON, max_size=3)
        valid = st.one_of(
            full, st.fixed_dictionaries({}, optional=props), st.tuples(full, extra).map(lambda t: {**t[1], **t[0]})
        )
    elif kind == "array":
        valid = st.lists(from_schema(schema.get("items", {}), defs, depth + 1), max_size=schema.get("maxItems", 6) + 2)
    elif kind == "string":
        valid = st.text(max_size=schema.get("maxLength", 40) + 10)
    elif kind == "integer":
        valid = st.one_of(
            st.integers(-4, 300), st.integers(), st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, -(2**63) - 1])
        )
    elif kind == "number":
        valid = st.one_of(st.floats(), st.integers(-10, 10), st.sampled_from([0.0, -0.0, 1e-320, 1e308, 600000.0001]))
    elif kind == "boolean":
        valid = st.booleans()
    elif kind == "null":
        valid = st.none()
    else:
        valid = ANY_JSON
    return st.one_of(valid, valid, valid, ANY_JSON)


def query_value(schema: dict[str, Any]) -> st.SearchStrategy[str]:
    """Query values: right for the parameter's schema, or of the wrong type or range."""

    def as_text(v: Any) -> str:
        return json.dumps(v) if isinstance(v, bool | None) else str(v)

    return st.one_of(from_schema(schema, {}).map(as_text), st.sampled_from(ODD_SCALARS), st.text(max_size=30))


def tensor_npy(side: int) -> bytes:
    return npy_array(np.full((3, side, side), 0.5, np.float32))


@st.composite
def _body(draw: st.DrawFn, op: Operation) -> tuple[str, bytes]:
    """(content type, body) for an operation."""
    content_type = draw(
        st.one_of(
            st.sampled_from(op.content_types or ["application/json"]),
            st.sampled_from(CONTENT_TYPES),
            st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=30),
        )
    )
    choice = draw(st.integers(0, 9))
    if choice == 0:
        return content_type, b""
    if choice <= 2:
        return content_type, draw(st.binary(max_size=2048))
    if op.content_types and choice <= 6:
        kind = draw(st.sampled_from([*IMAGE_KINDS, "npy"]))
        return content_type, tensor_npy(draw(st.integers(1, 96))) if kind == "npy" else sample_image(kind)
    if op.body_schema is not None or choice <= 6:
        defs = (op.body_schema or {}).get("$defs", {})
        value = draw(from_schema(op.body_schema, defs) if op.body_schema is not None else ANY_JSON)
        return content_type, json.dumps(value).encode()  # NaN/Infinity and big ints pass as written
    return content_type, json.dumps(draw(ANY_JSON)).encode()


@st.composite
def operation_case(draw: st.DrawFn, op: Operation, target: Target) -> Case:
    method = op.method if draw(st.integers(0, 7)) else draw(st.sampled_from(METHODS))
    path = op.path
    names = st.one_of(st.sampled_from(sorted(target.models)), st.sampled_from(PATH_ODDITIES), st.text(max_size=30))
    query: list[tuple[str, str]] = []
    for param in op.params:
        if param["in"] == "path":
            path = path.replace("{" + param["name"] + "}", path_segment(draw(names)))
        elif param["in"] == "query" and draw(st.booleans()):
            query += [(param["name"], draw(query_value(param.get("schema", {}))))] * draw(st.sampled_from([1, 1, 1, 2]))
    if not draw(st.integers(0, 5)):
        query += draw(st.lists(st.tuples(st.text(max_size=10), st.text(max_size=10)), max_size=3))
    headers: dict[str, str] = {}
    body = b""
    if method in ("POST", "PUT", "PATCH") or not draw(st.integers(0, 5)):
        content_type, body = draw(_body(op))
        if content_type:
            headers["Content-Type"] = content_type
    if op.path.endswith("/infer") and not draw(st.integers(0, 3)):
        headers["Inference-Header-Content-Length"] = draw(
            st.one_of(st.integers(-5, len(body) + 5).map(str), st.sampled_from(HEADER_SCALARS))
        )
    if not draw(st.integers(0, 9)):
        headers["Expect"] = "100-continue"
    target_path = path + ("?" + urlencode(query, quote_via=quote) if query else "")
    family = f"{op.method} {op.path}" if method == op.method else f"{op.method} {op.path} as {method}"
    return Case("schema", family, http_request(method, target_path, body, headers), method=method)


def schema_cases(target: Target) -> st.SearchStrategy[Case]:
    """Well-formed requests for every route of the daemon's OpenAPI schema."""
    return st.sampled_from(target.operations).flatmap(lambda op: operation_case(op, target))
