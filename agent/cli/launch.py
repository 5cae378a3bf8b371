"""Start the real daemon as a subprocess on a temp socket and wait for READY=1: used by
`edge-agent demo` and the benchmarks."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def running_daemon(
    env: dict[str, str] | None = None, args: list[str] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    with tempfile.TemporaryDirectory(prefix="edge-agent-bench-") as tmp:
        sock, notify_path = Path(tmp) / "edge-agent.sock", Path(tmp) / "notify.sock"
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(str(notify_path))
        notify.settimeout(120)
        full_env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "STATE_DIRECTORY": f"{tmp}/state",
            # An operator's EDGE_AGENT_STATE_DIR (meant for the gateway's daemon) would win over it.
            "EDGE_AGENT_STATE_DIR": f"{tmp}/state",
            "EDGE_AGENT_LOG_JSON": "true",
            **(env or {}),
        }
        log = open(Path(tmp) / "daemon.log", "wb")  # noqa: SIM115 - closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "agent", "serve", "--socket", str(sock), *(args or [])],
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 120
            while b"READY=1" not in notify.recv(4096):
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError((Path(tmp) / "daemon.log").read_text())
            yield proc, sock
        finally:
            proc.terminate()
            proc.wait(30)
            notify.close()
            log.close()
