"""Where a command writes what it produces for the reader (plots, decision logs): a folder
the user names, else a new one under the system's temporary directory. Never the working
directory unasked: in a checkout that is the repository's root."""

from __future__ import annotations

import tempfile
from pathlib import Path

import typer


def results_folder(chosen: Path | None, command: str) -> Path:
    """`chosen` (created if missing), else a new `edge-agent-results-<command>-*` folder under
    the temporary directory; an absolute path either way, for the output to name."""
    if chosen is None:
        return Path(tempfile.mkdtemp(prefix=f"edge-agent-results-{command}-")).resolve()
    try:
        chosen.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise typer.BadParameter(f"cannot use {chosen} as a folder: {exc.strerror}", param_hint="--results") from None
    return chosen.resolve()
