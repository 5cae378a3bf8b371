"""systemd's notify protocol (READY=1, STATUS=, WATCHDOG=1, RELOADING=1, STOPPING=1):
one datagram per message to $NOTIFY_SOCKET; a no-op when not run by systemd."""

from __future__ import annotations

import os
import socket
import time


def _address() -> str | None:
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return None
    return "\0" + path[1:] if path.startswith("@") else path


def notify(*lines: str) -> bool:
    """Send `lines` as one message; False when there is no notify socket or it fails.
    Never blocks: a unix datagram queue holds only ~10 unread messages, and a blocked send
    would stall the event loop that serves requests; a message that does not fit is dropped."""
    address = _address()
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.setblocking(False)
            sock.sendto("\n".join(lines).encode(), address)
        return True
    except OSError:
        return False


def reloading() -> bool:
    # systemd (253+) wants the monotonic time in microseconds with RELOADING=1.
    return notify("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")


def watchdog_interval_s() -> float | None:
    """Half the watchdog timeout systemd asked for, or None when it asked for none."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return int(usec) / 1e6 / 2
    except ValueError:
        return None
