"""The app of the TCP metrics listener (`metrics_listen`): read-only GET (and HEAD) of
/metrics, /v2/health/live and /v2/health/ready, and nothing else.

Classification, status and the admin routes stay on the Unix socket, whose file mode and
SO_PEERCRED decide who may call them; a TCP peer has neither, so this app has no route to
them at all: any other path is 404, any other method 405. The handlers are the Unix socket's
own (`probes`), async and cheap, so they run on the event loop without a thread hop and never
compete with inference for a worker.
"""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp

from agent.serving.app import ObserveMiddleware
from agent.serving.envelope import error_response
from agent.serving.probes import live_response, metrics_response, ready_response
from agent.serving.state import AppState

#: The only paths the TCP listener serves.
PATHS = ("/metrics", "/v2/health/live", "/v2/health/ready")


def create_metrics_app(state: AppState) -> ASGIApp:
    """The TCP listener's app over the daemon's `state` (same registry, same readiness)."""

    async def metrics(request: Request) -> Response:
        return metrics_response(state)

    async def live(request: Request) -> Response:
        return live_response()

    async def ready(request: Request) -> Response:
        return ready_response(state)

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        message = f"{request.url.path} is not served here; the TCP listener serves only GET {', '.join(PATHS)}"
        if exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; only GET and HEAD are"
        return error_response(
            codes.get(exc.status_code, "http_error"),
            message,
            exc.status_code,
            dict(exc.headers or {}),
            request.url.path,
        )

    # Starlette's Route answers HEAD wherever it answers GET (uvicorn then sends no body).
    routes = [
        Route(path, handler, methods=["GET"]) for path, handler in zip(PATHS, (metrics, live, ready), strict=True)
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: refused})
    app.router.redirect_slashes = False  # "/metrics/" is another path: 404, not a redirect
    return ObserveMiddleware(app, state)
