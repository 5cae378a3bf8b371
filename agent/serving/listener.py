"""The listening Unix socket: from systemd (LISTEN_FDS) or bound here, never stolen."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from pathlib import Path

from agent.errors import AgentError
from agent.private_files import private_dir

SD_LISTEN_FDS_START = 3


def systemd_socket() -> socket.socket | None:
    """The first socket systemd passed (socket activation), if it was meant for us."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(os.environ.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
        os.environ.pop(name, None)
    if count < 1:
        return None
    try:
        if not stat.S_ISSOCK(os.fstat(SD_LISTEN_FDS_START).st_mode):
            raise AgentError(f"LISTEN_FDS={count} but fd {SD_LISTEN_FDS_START} is not a socket")
    except OSError as exc:
        raise AgentError(f"LISTEN_FDS={count} but fd {SD_LISTEN_FDS_START} is unusable: {exc.strerror}") from exc
    sock = socket.socket(fileno=SD_LISTEN_FDS_START)
    sock.set_inheritable(False)
    return sock


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
