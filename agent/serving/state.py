"""What the routes need, owned by the daemon: settings, zoo, runner, metrics and its state."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from agent.serving.budget import ByteBudget
from agent.serving.decoding import Decoding
from agent.serving.metrics import Metrics
from agent.serving.runner import Runner
from agent.settings import Settings
from agent.zoo.sessions import Zoo


@dataclass
class AppState:
    """The daemon's side of the app: the routes read it, the daemon sets it."""

    settings: Settings
    zoo: Zoo
    runner: Runner
    metrics: Metrics
    started_at: float = field(default_factory=time.monotonic)  # uptime is a span: no wall-clock step moves it
    ready: bool = False
    draining: bool = False
    loop_priority: int = 0  # nice levels the event loop runs above the workers, as granted
    last_error: str | None = None
    #: HOST:PORT of the TCP metrics listener, as bound (or passed by systemd); None when off.
    metrics_address: str | None = None
    #: The reload (SIGHUP's work, off the event loop); set by the daemon.
    reload: Callable[[], Awaitable[dict[str, Any]]] | None = None
    #: More of `GET /v1/status` (the adaptive loop's view); set by the daemon.
    extra_status: Callable[[], dict[str, Any]] | None = None
    #: Waits until the pin in force is on disk (set by the daemon; None: nothing is persisted).
    pin_saved: Callable[[], Awaitable[None]] | None = None
    #: Where bodies are decoded, and the memory their decoding may take (from the settings).
    decoding: Decoding = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        budget = ByteBudget("decode memory", s.max_decoded_bytes, s.max_decoded_bytes_inflight, "max_decoded_bytes")
        self.decoding = Decoding(max(2, s.workers), budget)
