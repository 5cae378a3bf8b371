"""Which requests may take what, before the app sees them: inference and control routes have
budgets of their own, and an inference request's body is read before it counts as one.

A client that opens a few hundred inference requests and then sends their bodies slowly (or
never) must not lock out anyone else. So the routes are split in two kinds:

    inference  POST /v1/classify, POST /v2/models/{name}[/versions/1]/infer
    control    everything else: status, metrics, health, metadata, admin (pin, reload)

An inference request's body is read here first (413 at once when its declared length is over
`max_body_bytes`), holding only its declared bytes in the bodies budget; it takes one of the
`inference` places only once the body is complete. Control requests have their own small
number of places, so status, health and an admin's unpin answer while every inference place is
taken. How long a body may take is the protocol's (a deadline and a minimum rate, see
`agent.serving.protocol`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from starlette.datastructures import Headers
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent.errors import AgentError, Overloaded
from agent.serving.body import receive_body
from agent.serving.budget import ByteBudget
from agent.serving.envelope import error_response
from agent.serving.metrics import Metrics

log = structlog.get_logger(__name__)

CLASSIFY = "/v1/classify"
V2_MODELS = "/v2/models/"


def route_kind(scope: Scope) -> str:
    """`inference` for the routes that run a model, `control` for every other."""
    path, method = scope.get("path", ""), scope.get("method", "")
    if method == "POST" and (path == CLASSIFY or (path.startswith(V2_MODELS) and path.endswith("/infer"))):
        return "inference"
    return "control"


def route_label(path: str) -> str:
    """The metrics label of an inference route refused here (the router has not named it yet)."""
    return CLASSIFY if path == CLASSIFY else "/v2/models/{name}/infer"


@dataclass(frozen=True)
class GateLimits:
    inference: int  # inference requests with their body in, handled at once
    control: int  # control requests handled at once
    max_body_bytes: int  # one body
    bodies: ByteBudget  # declared bytes of the inference bodies held at once


class RequestGate:
    """The budgets of the module docstring, in front of the app. Used instead of uvicorn's
    limit_concurrency, which also counts open connections (a few hundred idle ones would refuse
    everyone else) and makes no difference between routes."""

    def __init__(self, app: ASGIApp, limits: GateLimits, metrics: Metrics) -> None:
        self.app = app
        self.limits = limits
        self.metrics = metrics
        self.active = {"inference": 0, "control": 0}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if route_kind(scope) == "control":
            await self._run("control", self.limits.control, scope, receive, send)
            return
        try:
            headers = Headers(scope=scope)
            length = headers.get("content-length")
            declared = self.limits.max_body_bytes
            if length is not None and length.isdigit():
                declared = min(declared, int(length))
            held = self.limits.bodies.reserve(declared, "the request body")
        except AgentError as exc:
            await self._refuse(exc, scope, receive, send, "body_memory")
            return
        try:
            try:
                body = await receive_body(receive, length, self.limits.max_body_bytes)
            except AgentError as exc:
                await self._refuse(exc, scope, receive, send, "")
                return
            except ClientDisconnect:
                # Gone, or cut by the protocol's body deadline (it answered 408): nobody to answer.
                self.metrics.requests.labels(route=route_label(scope["path"]), status="499").inc()
                log.debug("client_disconnected", path=scope.get("path"), phase="body")
                return
            await self._run("inference", self.limits.inference, scope, _replay(body, receive), send)
        finally:
            held.release()

    async def _run(self, kind: str, limit: int, scope: Scope, receive: Receive, send: Send) -> None:
        if self.active[kind] >= limit:
            message = f"{self.active[kind]} {kind} requests in progress; try again shortly"
            await self._refuse(Overloaded(message), scope, receive, send, "concurrency")
            return
        self.active[kind] += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active[kind] -= 1

    async def _refuse(self, exc: AgentError, scope: Scope, receive: Receive, send: Send, shed: str) -> None:
        """Answer `exc` as the app's error handlers would, counted in the same metrics."""
        path = scope.get("path", "")
        headers = None
        retry = getattr(exc, "retry_after_s", None)
        if retry is not None:
            headers = {"Retry-After": str(max(1, math.ceil(retry)))}
            self.metrics.shed.labels(reason=shed or "queue").inc()
        self.metrics.errors.labels(code=exc.code).inc()
        label = route_label(path) if route_kind(scope) == "inference" else "unmatched"
        self.metrics.requests.labels(route=label, status=str(exc.status)).inc()
        await error_response(exc.code, exc.message, exc.status, headers, path)(scope, receive, send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the app the body read already, then the connection's own messages
    (a disconnect)."""
    pending = True

    async def replay() -> Message:
        nonlocal pending
        if pending:
            pending = False
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


class RequestLimit:
    """At most `limit` requests handled at once, whatever the route; the rest get a JSON 503
    with Retry-After. The TCP metrics listener's bound: it serves only cheap read-only routes,
    so it needs no split by kind and reads no bodies."""

    def __init__(self, app: ASGIApp, limit: int, on_refuse: Callable[[], None]) -> None:
        self.app = app
        self.limit = limit
        self.on_refuse = on_refuse
        self.active = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            self.on_refuse()
            message = f"{self.active} requests in progress; try again shortly"
            answer = error_response("overloaded", message, 503, {"Retry-After": "1"}, scope.get("path", ""))
            await answer(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1
