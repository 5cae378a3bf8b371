"""Start the real daemon as a subprocess on a temp socket and wait for READY=1 (an event,
not a sleep): the notify socket is the same one systemd would give it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agent.client import Client

REPO = Path(__file__).resolve().parent.parent


@dataclass
class DaemonProcess:
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)  # e.g. a shell that sets LISTEN_PID=$$ and execs
    proc: subprocess.Popen[bytes] | None = None
    notify: socket.socket | None = None
    messages: list[str] = field(default_factory=list)

    @property
    def socket_path(self) -> Path:
        return self.workdir / "edge-agent.sock"

    @property
    def log_path(self) -> Path:
        return self.workdir / "daemon.log"

    def start(
        self, timeout: float = 60.0, pass_fds: tuple[int, ...] = (), preexec=None, wait: bool = True
    ) -> DaemonProcess:  # type: ignore[no-untyped-def]
        self.workdir.mkdir(parents=True, exist_ok=True)
        notify_path = self.workdir / "notify.sock"
        notify_path.unlink(missing_ok=True)
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(notify_path))
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify_path),
            "STATE_DIRECTORY": str(self.workdir / "state"),
            "EDGE_AGENT_LOG_JSON": "true",
            **self.env,
        }
        env.pop("RUNTIME_DIRECTORY", None)
        cmd = [*self.prefix, sys.executable, "-m", "agent", "serve", "--socket", str(self.socket_path), *self.args]
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            cmd, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, pass_fds=pass_fds, preexec_fn=preexec
        )
        if wait:
            self.wait_for("READY=1", timeout)
        return self

    def wait_for(self, text: str, timeout: float = 60.0) -> str:
        """Block until a notify message containing `text` arrives (or the daemon dies)."""
        assert self.notify is not None and self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            for message in self.messages:
                if text in message:
                    return message
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {text!r} from the daemon in {timeout} s; log:\n{self.log()}")
            self.notify.settimeout(min(remaining, 0.5))
            try:
                self.messages.append(self.notify.recv(4096).decode())
            except TimeoutError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"daemon exited with {self.proc.returncode}; log:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def client(self, timeout: float = 30.0) -> Client:
        return Client(self.socket_path, timeout=timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self.close()
        return code

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        if self.notify is not None:
            self.notify.setblocking(False)
            try:
                while True:
                    self.messages.append(self.notify.recv(4096).decode())
            except BlockingIOError:
                pass
            self.notify.close()
            self.notify = None
        if hasattr(self, "_log"):
            self._log.close()


def eventually(
    check: Callable[[], object],
    timeout: float,
    what: str,
    interval: float = 0.1,
    context: Callable[[], object] | None = None,
) -> object:
    """Poll `check` until it returns a truthy value; the bound is generous, not a timing claim.
    On failure the message adds `context()`, the state that says why it never came true."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    why = f"; {context()}" if context is not None else ""
    raise AssertionError(f"not within {timeout} s: {what} (last: {last!r}){why}")


@contextmanager
def serving_as_written(args: list[str], cwd: Path, env: dict[str, str], notify: Path) -> Iterator[None]:
    """`edge-agent ARGS` as a user types it (no test socket of ours), until READY=1; on leaving,
    SIGTERM and a clean exit are required."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(notify))
    listener.settimeout(120)
    proc = subprocess.Popen(
        [sys.executable, "-m", "agent", *args],
        cwd=cwd,
        env={**env, "NOTIFY_SOCKET": str(notify)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        while b"READY=1" not in listener.recv(4096):
            pass
        yield
    finally:
        proc.terminate()
        assert proc.wait(30) == 0
        listener.close()
