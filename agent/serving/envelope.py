"""The one error envelope, and JSON answers.

Two bodies, chosen by route: the Open Inference Protocol's routes (`/v2` and below) answer the
protocol's error object, `{"error": "<message>"}` (KServe v2 `$inference_error_response`), which
tensor clients such as NVIDIA's tritonclient read as a string; every other route answers
`{"error": {"code", "message"}}`. A leaf of the serving layer: the app's exception handlers and
the protocol (which answers before a request reaches the app) both build their errors here.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response
from starlette.types import Send

JSON = "application/json"
_JSON_BYTES = JSON.encode()
#: The Open Inference Protocol's routes: the server metadata at V2_ROOT, everything else under it.
V2_ROOT = "/v2"


def speaks_v2(path: str) -> bool:
    """Whether `path` is one of the Open Inference Protocol's routes (its error body applies)."""
    return path == V2_ROOT or path.startswith(V2_ROOT + "/")


def error_body(code: str, message: str, path: str = "") -> bytes:
    """The error's bytes for a request to `path`: the v2 error object on the v2 routes (the code
    is left out: the protocol's body has only the message), the envelope elsewhere."""
    if speaks_v2(path):
        return orjson.dumps({"error": message})
    return orjson.dumps({"error": {"code": code, "message": message}})


async def send_json(send: Send, content: Any, status: int = 200) -> None:
    """Answer `content` as JSON through an ASGI `send`: what `json_response` sends, without
    building a Response (the inference lane answers every request this way)."""
    body = orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
    headers = [(b"content-type", _JSON_BYTES), (b"content-length", b"%d" % len(body))]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON)


def error_response(
    code: str, message: str, status: int, headers: dict[str, str] | None = None, path: str = ""
) -> Response:
    """An error answer to a request for `path` (see `error_body`)."""
    return Response(error_body(code, message, path), status, headers, media_type=JSON)
