"""The answers a monitor reads: Prometheus text and the v2 liveness and readiness probes.

Built here once, so the Unix socket's routes and the TCP metrics listener (`metrics_app`) say
the same thing from the same registry and the same readiness rule.
"""

from __future__ import annotations

from starlette.responses import Response

from agent.serving.envelope import json_response
from agent.serving.state import AppState

#: Prometheus's text exposition format, as prometheus_client renders it.
METRICS_MEDIA_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def is_ready(state: AppState) -> bool:
    """Serving: the zoo is loaded and warm, the socket listens, and no drain has begun."""
    return state.ready and not state.draining


def metrics_response(state: AppState) -> Response:
    """`GET /metrics`: every series of the daemon's registry, the in-flight gauge read now."""
    state.metrics.inflight.set(state.runner.inflight)
    return Response(state.metrics.render(), media_type=METRICS_MEDIA_TYPE)


def live_response() -> Response:
    """`GET /v2/health/live`: the process answers."""
    return json_response({"live": True})


def ready_response(state: AppState) -> Response:
    """`GET /v2/health/ready`: 200 while serving, 503 while starting or draining."""
    ok = is_ready(state)
    return json_response({"ready": ok}, 200 if ok else 503)
