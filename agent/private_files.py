"""Folders and files the daemon owns (the socket's folder, the state folder, pin.json), made
the way a hardened server makes them: explicit modes whatever the process umask, a unique
temporary name opened O_EXCL and renamed over the target (a link planted by another user is
replaced, never followed), and a state file trusted only if it is a regular file of ours and
small. Under the systemd unit (UMask=0007, RuntimeDirectoryMode=0750) the kernel already gives
most of this; run by hand under umask 000, only this does."""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from pathlib import Path

from agent.errors import AgentError

#: Owner rwx, group rx: the group may reach the socket, no one else may look in.
PRIVATE_DIR_MODE = 0o750
#: A file the service reads that another user (root, through a CLI command) may write.
SHARED_FILE_MODE = 0o644
#: A state file is a few hundred bytes of JSON; anything much larger is not ours.
MAX_STATE_FILE_BYTES = 64 * 1024


class UnsafePath(AgentError):
    """A folder or state file another user could have written, or one that is not what we write."""


def private_dir(path: Path, mode: int = PRIVATE_DIR_MODE) -> None:
    """Create `path` and its missing parents with `mode` exactly; an existing folder must belong
    to this user (or root) and must not be writable by others."""
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        with contextlib.suppress(FileExistsError):
            os.mkdir(folder, mode)
            fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
            try:
                os.fchmod(fd, mode)  # mkdir's mode passes through the umask; this does not
            finally:
                os.close(fd)
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePath(f"{path} exists and is not a folder")
    if st.st_uid not in (os.getuid(), 0):
        raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to this daemon (uid {os.getuid()}) or root")
    if st.st_mode & stat.S_IWOTH:
        raise UnsafePath(f"{path} is writable by every user (mode {stat.S_IMODE(st.st_mode):o}); chmod o-w it")


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write `data` to `path` so that a reader, or a restart after a SIGKILL or a power cut, finds
    the old file or the new one whole, never a mix: a unique temp file (O_EXCL) given `mode`
    whatever the umask, fsync, rename over `path` (a symlink there is replaced, its target
    untouched), fsync the folder. `mode` matters when root writes a file the service must read
    (0644), or when only the daemon may (0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            os.fchmod(out.fileno(), mode)
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


def write_private(path: Path, data: bytes) -> None:
    """A state file only the daemon reads: `write_atomic` with mode 0600."""
    write_atomic(path, data, 0o600)


def read_private(path: Path, max_bytes: int = MAX_STATE_FILE_BYTES) -> bytes | None:
    """The bytes of state file `path`, or None when there is none. Refused (UnsafePath) unless it
    is a regular file of this user, not a link, at most `max_bytes`. Opened non-blocking, so a
    FIFO planted there cannot hang the start."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; a state file must be a plain file") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafePath(f"{path} is not a regular file")
        if st.st_uid != os.getuid():
            raise UnsafePath(f"{path} belongs to uid {st.st_uid}, not to this daemon (uid {os.getuid()})")
        if st.st_size > max_bytes:
            raise UnsafePath(f"{path} holds {st.st_size} bytes, more than a state file's {max_bytes}")
        chunks, size = [], 0
        while chunk := os.read(fd, max_bytes + 1 - size):
            chunks.append(chunk)
            size += len(chunk)
            if size > max_bytes:
                raise UnsafePath(f"{path} grew past {max_bytes} bytes while read")
        return b"".join(chunks)
    finally:
        os.close(fd)
