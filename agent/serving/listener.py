"""The listening sockets: the API's Unix socket and the optional TCP socket of the metrics
listener, each from systemd (LISTEN_FDS) or bound here; a live socket is never stolen."""

from __future__ import annotations

import contextlib
import errno
import os
import socket
import stat
from dataclasses import dataclass
from pathlib import Path

from agent.address import ListenAddress
from agent.errors import AgentError
from agent.private_files import private_dir

SD_LISTEN_FDS_START = 3


@dataclass(frozen=True)
class Activated:
    """The sockets systemd passed (socket activation): the API's Unix socket (edge-agent.socket)
    and the metrics listener's TCP socket (edge-agent-metrics.socket); either may be absent."""

    api: socket.socket | None = None
    metrics: socket.socket | None = None


def systemd_sockets() -> Activated:
    """The listening sockets systemd passed, if they were meant for us, told apart by family: a
    Unix one is the API, an IP one the metrics listener. Anything else is refused, not guessed."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return Activated()
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return Activated()
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    found: dict[str, socket.socket] = {}
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + max(0, count)):
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                raise AgentError(f"LISTEN_FDS={count} but fd {fd} is not a socket")
        except OSError as exc:
            raise AgentError(f"LISTEN_FDS={count} but fd {fd} is unusable: {exc.strerror}") from exc
        sock = socket.socket(fileno=fd)
        sock.set_inheritable(False)
        role = {socket.AF_UNIX: "api", socket.AF_INET: "metrics", socket.AF_INET6: "metrics"}.get(sock.family)
        if role is None or role in found or sock.type != socket.SOCK_STREAM:
            raise AgentError(
                f"LISTEN_FDS: fd {fd} (family {sock.family!s}, type {sock.type!s}) is not wanted: edge-agent "
                "takes one Unix stream socket (the API) and at most one TCP socket (metrics)"
            )
        found[role] = sock
    return Activated(**found)


def _in_use(path: Path) -> bool:
    """Whether a daemon answers on `path`. A socket this user may not connect to (EACCES) is
    another user's, live or stale, and neither ours to replace nor proof of a daemon: an error
    that says so."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except PermissionError:
        st = path.lstat()
        raise AgentError(
            f"{path} is a socket of uid {st.st_uid} (mode {stat.S_IMODE(st.st_mode):o}) that uid {os.getuid()} may "
            "not connect to: left by another user, or their daemon; not replaced. Remove it as that user or root, "
            "or choose another --socket"
        ) from None
    except OSError:
        return True  # e.g. a full backlog: someone is there
    finally:
        probe.close()
    return True


def bind_unix(path: Path, mode: int) -> socket.socket:
    """Bind `path` with `mode`. A stale socket from a crash is replaced; a live one is an error.
    A missing folder is made 0750 whatever the umask; one any user may write to is refused,
    since whoever can write there can swap the socket for their own."""
    private_dir(path.parent)
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise AgentError(f"{path} exists and is not a socket; refusing to replace it")
        if _in_use(path):
            raise AgentError(f"{path} is in use by a running daemon; stop it first or choose another --socket")
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old_umask = os.umask(0o777 & ~mode)  # no window in which the socket is more open than `mode`
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise AgentError(f"cannot bind {path}: {exc.strerror}") from exc
    finally:
        os.umask(old_umask)
    os.chmod(path, mode)
    sock.listen(512)
    return sock


def socket_identity(path: Path) -> tuple[int, int]:
    st = path.lstat()
    return st.st_dev, st.st_ino


def remove_socket(path: Path, identity: tuple[int, int]) -> None:
    """Remove our socket file, but only if it is still the one we bound."""
    with contextlib.suppress(OSError):
        if socket_identity(path) == identity:
            path.unlink()


def bind_tcp(address: ListenAddress) -> socket.socket:
    """A listening TCP socket on `address`. SO_REUSEADDR (as every server sets it) lets a restart
    bind while the last run's connections linger in TIME_WAIT; a port another process listens on
    is still refused, and said so. An IPv6 socket serves IPv6 only, so `[::]` and `0.0.0.0` mean
    what they say."""
    family = socket.AF_INET6 if address.ipv6 else socket.AF_INET
    try:
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as exc:
        hint = ""
        if exc.errno in (errno.EAFNOSUPPORT, errno.EPERM, errno.EACCES):
            hint = " (the edge-agent unit has no network: enable edge-agent-metrics.socket instead; docs/fleet.md)"
        raise AgentError(f"cannot listen for metrics on {address}: {exc.strerror}{hint}") from exc
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if address.ipv6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind((address.host, address.port))
        sock.listen(128)
    except OSError as exc:
        sock.close()
        hint = ""
        if exc.errno == errno.EADDRINUSE:
            hint = " (another process listens there; choose another metrics_listen port)"
        raise AgentError(f"cannot listen for metrics on {address}: {exc.strerror}{hint}") from exc
    sock.set_inheritable(False)
    return sock
