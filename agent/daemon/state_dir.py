"""Whether the state directory can take the daemon's writes (pin.json), and what status says.

A gateway's state directory goes read-only (the kernel remounts a failing SD card or eMMC
read-only) or full (logs on the same partition). The daemon serves on either way: nothing
it writes there is needed to answer a request. It says so once in the log (once per distinct
problem, and once when it clears), in `/v1/status` (`state_dir.problem`, e.g. "read-only:
cannot save pin.json") and in the `edge_agent_state_dir_writable` gauge, rather than a line
per attempt. The watch (`check`, a periodic job) finds the problem before a write does; a
write's failure (`wrote`) names the file that could not be saved.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

import structlog

from agent.errors import AgentError
from agent.private_files import MAX_STATE_FILE_BYTES

log = structlog.get_logger(__name__)

#: Less free space than the largest state file: the next write may fail, so call it full.
MIN_FREE_BYTES = MAX_STATE_FILE_BYTES


def describe(exc: BaseException) -> str:
    """A write's failure in the words an operator searches for."""
    code = getattr(exc, "errno", None)
    if code == errno.EROFS:
        return "read-only"
    if code in (errno.ENOSPC, errno.EDQUOT):
        return "disk full"
    if code in (errno.EACCES, errno.EPERM):
        return "permission denied"
    if isinstance(exc, AgentError):
        return exc.message
    return getattr(exc, "strerror", None) or str(exc)


class StateDir:
    """The state directory's health as the watch and the daemon's writes find it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._found: str | None = None  # by the watch
        self._failed: str | None = None  # by the last write
        self._logged: str | None = None

    @property
    def problem(self) -> str | None:
        """Why the daemon cannot save its state now, or None."""
        return self._failed or self._found

    def check(self) -> None:
        """The periodic watch: read-only, full or not writable by this user."""
        try:
            fs = os.statvfs(self.path)
        except FileNotFoundError:
            found = None  # created at the first write
        except OSError as exc:
            found = describe(exc)
        else:
            if fs.f_flag & os.ST_RDONLY:
                found = "read-only"
            elif fs.f_bavail * fs.f_frsize < MIN_FREE_BYTES:
                found = "disk full"
            elif not os.access(self.path, os.W_OK):
                found = "permission denied"
            else:
                found = None
        self._found = found
        self._publish()

    @property
    def retry(self) -> bool:
        """A save failed and the folder looks writable again: the daemon saves its state anew."""
        return self._failed is not None and self._found is None

    def wrote(self, name: str, exc: BaseException | None) -> None:
        """Record how saving the state file `name` went (`exc`: why it failed)."""
        self._failed = None if exc is None else f"{describe(exc)}: cannot save {name}"
        self._publish()

    def _publish(self) -> None:
        problem = self.problem
        if problem == self._logged:
            return
        if problem is None:
            log.info("state_dir_writable", path=str(self.path))
        else:
            log.error("state_dir_unwritable", path=str(self.path), problem=problem, serving="unaffected")
        self._logged = problem

    def status(self) -> dict[str, object]:
        """For `GET /v1/status`."""
        return {"path": str(self.path), "problem": self.problem}
