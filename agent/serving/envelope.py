"""The one error envelope, `{"error": {"code", "message"}}`, and JSON answers.

A leaf of the serving layer: the app's exception handlers and the protocol (which answers
before a request reaches the app) both build their errors here.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

JSON = "application/json"


def error_body(code: str, message: str) -> bytes:
    """The envelope's bytes."""
    return orjson.dumps({"error": {"code": code, "message": message}})


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY), status, headers, media_type=JSON)


def error_response(code: str, message: str, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(error_body(code, message), status, headers, media_type=JSON)
