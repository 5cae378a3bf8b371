"""One error hierarchy: each error has a stable code and the HTTP status it maps to; and the
one formatter of a pydantic ValidationError. A leaf: no framework import at run time."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol


class AgentError(Exception):
    code = "internal"
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadInput(AgentError):
    code = "bad_input"
    status = 400


class UnsupportedMediaType(AgentError):
    code = "unsupported_media_type"
    status = 415


class PayloadTooLarge(AgentError):
    code = "payload_too_large"
    status = 413


class InvalidTensor(AgentError):
    code = "invalid_tensor"
    status = 422


class RoiOutsideFrame(AgentError):
    """The region of interest reaches outside the frame it should be cut from."""

    code = "roi_outside_frame"
    status = 422


class ExplainUnavailable(AgentError):
    """`explain=true` asked of a variant whose model has no attention output to explain with."""

    code = "explain_unavailable"
    status = 422


class NotFound(AgentError):
    code = "not_found"
    status = 404


class Overloaded(AgentError):
    code = "overloaded"
    status = 503

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class Forbidden(AgentError):
    code = "forbidden"
    status = 403


class ZooError(AgentError):
    """The model zoo or one of its variants is unusable (bad manifest, hash, file)."""

    code = "zoo_error"
    status = 500


class VariantUnavailable(ZooError):
    """The variant is out of service: its file no longer matches the manifest."""

    code = "variant_unavailable"
    status = 503


class InferenceFailed(AgentError):
    """onnxruntime raised while running a variant: the model failed, not the request's format."""

    code = "inference_failed"
    status = 500


class InvalidRequest(AgentError):
    """A request body or query that does not match its schema (a pin, a v2 request's fields)."""

    code = "invalid_request"
    status = 422


class _Invalid(Protocol):
    def errors(self) -> Sequence[Any]: ...


def validation_message(exc: _Invalid, root: str = "") -> str:
    """A pydantic ValidationError (or FastAPI's RequestValidationError) as one line, `loc: msg`,
    for its first error; `root` names an empty loc."""
    errors = exc.errors()
    if not errors:
        return f"{root or '(root)'}: invalid"
    first = errors[0]
    where = ".".join(str(part) for part in first.get("loc", ())) or root
    return f"{where}: {first.get('msg')}" if where else str(first.get("msg"))
