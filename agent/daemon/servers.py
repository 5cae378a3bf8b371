"""The daemon's two uvicorn servers: the API on the Unix socket and the optional TCP metrics
listener, each with the protocol's per-phase deadlines and a bound on requests at once."""

from __future__ import annotations

import contextlib
import socket
from collections.abc import Callable, Generator

import structlog
import uvicorn
from prometheus_client import CollectorRegistry, Counter

from agent.address import ListenAddress, parse_listen_address
from agent.serving.app import create_app
from agent.serving.budget import ByteBudget
from agent.serving.gate import GateLimits, RequestGate, RequestLimit
from agent.serving.listener import bind_tcp
from agent.serving.metrics import Metrics
from agent.serving.metrics_app import create_metrics_app
from agent.serving.protocol import ConnectionLimits, protocol_class
from agent.serving.state import AppState
from agent.settings import Settings

log = structlog.get_logger(__name__)

#: Requests the TCP metrics listener handles at once (its handlers take microseconds; a few
#: scrapers and probes need a handful); more get 503.
METRICS_CONCURRENCY = 16


class Server(uvicorn.Server):
    """uvicorn's server without its signal capture (the daemon owns signals) and with a hook
    once it listens (READY=1 is sent only then)."""

    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            self._on_listening()


def timeouts_counter(registry: CollectorRegistry) -> Counter:
    return Counter(
        "edge_agent_connection_timeouts_total",
        "Connections closed for a timeout, by phase (idle, keepalive, headers, body, body_rate)",
        ["phase"],
        registry=registry,
    )


def connection_limits(s: Settings, on_timeout: Callable[[str], None]) -> ConnectionLimits:
    return ConnectionLimits(
        idle_s=s.idle_timeout_s,
        header_s=s.header_timeout_s,
        body_s=s.body_timeout_s,
        max_header_bytes=s.max_header_bytes,
        body_grace_s=s.body_grace_s,
        body_min_rate=s.body_min_rate,
        on_timeout=on_timeout,
    )


def api_config(s: Settings, state: AppState, metrics: Metrics, limits: ConnectionLimits) -> uvicorn.Config:
    """The requests handled at once are bounded by the gate rather than by uvicorn's
    limit_concurrency, which also counts idle connections (see agent/serving/gate.py)."""
    gate = GateLimits(
        inference=s.queue_size + s.workers + 256,
        control=s.control_requests,
        max_body_bytes=s.max_body_bytes,
        bodies=ByteBudget("body memory", s.max_body_bytes, s.max_body_bytes_inflight, "max_body_bytes"),
    )
    return uvicorn.Config(
        RequestGate(create_app(state), gate, metrics),
        http=protocol_class(limits),
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=max(1, round(s.drain_timeout_s)),
        server_header=False,
        proxy_headers=False,  # a Unix socket has no proxy in front and no client address to rewrite
    )


def metrics_config(state: AppState, metrics: Metrics, limits: ConnectionLimits) -> uvicorn.Config:
    """The TCP metrics listener: the same protocol and phase deadlines as the Unix socket
    (a slow or garbage-sending client is cut off alike), a small bound on requests at once,
    a short graceful shutdown (a scrape takes milliseconds)."""
    refused = metrics.shed.labels(reason="concurrency")
    return uvicorn.Config(
        RequestLimit(create_metrics_app(state), METRICS_CONCURRENCY, refused.inc),
        http=protocol_class(limits),
        lifespan="off",
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=1,
        server_header=False,
        proxy_headers=False,  # no proxy is trusted: the peer's address is what it is
    )


def metrics_socket(wanted: str | None, activated: socket.socket | None) -> socket.socket | None:
    """The metrics listener's socket: systemd's (edge-agent-metrics.socket, so the service
    itself needs no network) or bound here on `metrics_listen`; None when neither is set."""
    if activated is None:
        return None if wanted is None else bind_tcp(parse_listen_address(wanted))
    got = str(ListenAddress(*activated.getsockname()[:2]))
    if wanted is not None and wanted != got:
        log.warning("metrics_listen_overridden", setting=wanted, socket_activated=got)
    return activated
