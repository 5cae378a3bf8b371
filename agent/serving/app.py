"""The ASGI app: FastAPI with the route groups of `agent.serving.routes`, the middleware that
observes every request, and the one place errors become the JSON envelope.

`POST /v1/classify` (the camera's request, and most of the traffic) takes its own lane: it goes
from the gate straight to its handler, observed and answered the same way, without FastAPI's
middleware stack and router. Those were about a fifth of the event loop's Python time for a
classify in a profile, and the lane took 0.18 to 0.28 ms off its round trip (measured side by
side with the previous code). FastAPI still declares the route, so it stays in the OpenAPI
schema, and a method other than POST on it reaches FastAPI and is answered 405."""

from __future__ import annotations

import math
import random
import time

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agent import __version__
from agent.errors import AgentError, validation_message
from agent.serving.api import ErrorBody
from agent.serving.envelope import error_response
from agent.serving.gate import CLASSIFY
from agent.serving.routes import admin, v1, v2
from agent.serving.state import AppState

log = structlog.get_logger(__name__)


class ObserveMiddleware:
    """Counts every answer by route and status, logs a sample of requests, and turns any
    unexpected exception into a logged 500 JSON answer."""

    def __init__(self, app: ASGIApp, state: AppState, label: str | None = None) -> None:
        self.app = app
        self.state = state
        self.label = label  # the route's label when no router names it (the classify lane)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = {"code": 500, "sent": False}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                status["sent"] = True
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client hung up before its body arrived: nobody to answer, nothing broken here.
            status["code"] = 499
            log.info("client_disconnected", path=scope.get("path"))
        except Exception as exc:
            log.exception("request_failed", path=scope.get("path"), error=repr(exc))
            self.state.last_error = f"{type(exc).__name__}: {exc}"
            self.state.metrics.errors.labels(code="internal").inc()
            if not status["sent"]:
                response = error_response(
                    "internal", "internal error; see the daemon log", 500, path=scope.get("path", "")
                )
                await response(scope, receive, send_wrapper)
        label = self.label or getattr(scope.get("route"), "path", "unmatched")
        self.state.metrics.requests.labels(route=label, status=str(status["code"])).inc()
        sample = self.state.settings.request_log_sample
        if sample and random.random() < sample:
            log.info(
                "request",
                method=scope["method"],
                path=label,
                status=status["code"],
                ms=round((time.perf_counter() - started) * 1000, 3),
            )


class ClassifyLane:
    """`POST /v1/classify` to its own handler (module docstring), everything else to `api`."""

    def __init__(self, api: ASGIApp, classify: ASGIApp) -> None:
        self.api = api
        self.classify = classify

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == CLASSIFY and scope["method"] == "POST":
            await self.classify(scope, receive, send)
        else:
            await self.api(scope, receive, send)


def answering_refusals(handler: ASGIApp, state: AppState) -> ASGIApp:
    """`handler` with its refusals (AgentError) answered as FastAPI's handler answers them."""

    async def answering(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await handler(scope, receive, send)
        except AgentError as exc:
            await refusal(state, exc, scope["path"])(scope, receive, send)

    return answering


def create_app(state: AppState) -> ASGIApp:
    """The app of one daemon: v1, v2 and admin routes over `state`, classify in its own lane."""
    api = create_api(state)
    lane = ObserveMiddleware(answering_refusals(v1.classify_handler(state), state), state, label=CLASSIFY)
    return ClassifyLane(api, lane)


def create_api(state: AppState) -> FastAPI:
    """The FastAPI app: every route (classify only declared, see the module docstring)."""
    app = FastAPI(
        title="edge-agent",
        version=__version__,
        description="Adaptive on-device inference over a Unix socket.",
        # Prometheus (/metrics) and structlog do this job here; FastAPI's OpenTelemetry hooks
        # would only cost each request a check of the global providers.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        responses={status: {"model": ErrorBody} for status in (400, 413, 415, 422, 503)},
    )
    app.add_middleware(ObserveMiddleware, state=state)
    add_error_handlers(app, state)
    v1.register(app, state)
    v2.register(app, state)
    admin.register(app, state)
    return app


def refusal(state: AppState, exc: AgentError, path: str) -> Response:
    """The answer to a refused request, counted: its status, Retry-After when it was shed, and
    the error body of its route; a server-side failure is kept as the status's last_error."""
    metrics = state.metrics
    headers = None
    retry = getattr(exc, "retry_after_s", None)
    if retry is not None:
        headers = {"Retry-After": str(max(1, math.ceil(retry)))}
        metrics.shed.labels(reason="deadline" if "deadline" in exc.message else "queue").inc()
    metrics.errors.labels(code=exc.code).inc()
    if exc.status >= 500 and retry is None:
        state.last_error = exc.message
    return error_response(exc.code, exc.message, exc.status, headers, path)


def add_error_handlers(app: FastAPI, state: AppState) -> None:
    """Every refusal answers its error's status with the error body of its route (`envelope`)."""
    metrics = state.metrics

    @app.exception_handler(AgentError)
    async def _agent_error(request: Request, exc: AgentError) -> Response:
        return refusal(state, exc, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        metrics.errors.labels(code="invalid_request").inc()
        message = validation_message(exc) if exc.errors() else "invalid request"
        return error_response("invalid_request", message, 422, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        codes = {404: "not_found", 405: "method_not_allowed"}
        code = codes.get(exc.status_code, "http_error")
        return error_response(code, str(exc.detail), exc.status_code, path=request.url.path)
