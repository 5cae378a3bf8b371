"""Reading a request body: bounded (413 as soon as it is known to be too large), and JSON bodies
parsed with orjson into their pydantic model in one place."""

from __future__ import annotations

from typing import TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from agent.errors import AgentError, BadInput, InvalidRequest, PayloadTooLarge, validation_message

Model = TypeVar("Model", bound=BaseModel)


async def receive_body(receive: Receive, length: str | None, limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed `limit` (never read whole)."""
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise BadInput("invalid Content-Length") from None
        if declared > limit:
            raise PayloadTooLarge(f"body of {declared} bytes exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def parse_json(model: type[Model], body: bytes, invalid: type[AgentError] = InvalidRequest) -> Model:
    """`body` as `model`: 400 if it is not JSON, `invalid` (422) naming the first field at fault."""
    try:
        return model.model_validate(orjson.loads(body))
    except orjson.JSONDecodeError as exc:
        raise BadInput(f"invalid JSON: {exc}") from None
    except ValidationError as exc:
        raise invalid(validation_message(exc)) from None
