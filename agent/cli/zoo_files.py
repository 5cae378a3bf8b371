"""Where `edge-agent zoo` commands read your images and write this gateway's state files
(the device profile, the site accuracy table), and how they fail: one line, exit status 1."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from agent.paths import Located, locate_state_dir
from agent.private_files import SHARED_FILE_MODE, write_atomic

if TYPE_CHECKING:
    import numpy as np

console = Console(width=max(Console().width, 130))


def fail(message: str) -> NoReturn:
    console.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(1)


def write_state(out: Located, text: str) -> str:
    """Write `text` to the file `out` whole (the daemon may read it at any moment, and a crash
    or power cut meanwhile must leave the old file or the new one, never a torn one); the message
    names the file and how its place was chosen."""
    check_writable(out)
    try:
        write_atomic(out.path, text.encode("utf-8"), SHARED_FILE_MODE)  # root may write it; the service reads it
    except OSError as exc:
        cannot_write(out, exc.strerror or str(exc), isinstance(exc, PermissionError))
    return str(out)


def check_writable(out: Located) -> None:
    """Fail before a long measurement, not after it, when its result could not be written."""
    folder = out.path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        cannot_write(out, f"{folder} is not a folder", denied=False)
    except OSError as exc:
        cannot_write(out, exc.strerror or str(exc), isinstance(exc, PermissionError))
    if not os.access(folder, os.W_OK):
        cannot_write(out, "Permission denied", denied=True)


def cannot_write(out: Located, reason: str, denied: bool) -> None:
    """The service's state directory belongs to the service's user: say so when refused."""
    hint = "run as the daemon's user (sudo -u edge-agent for the service) or " if denied else ""
    option = "--out" if out.how == "--out" else "--state-dir"
    fail(f"cannot write {out}: {reason}; {hint}choose another place with {option}")


def in_state_dir(state_dir: Path | None, name: str) -> Located:
    """The file `name` in the state directory the discovery rule finds."""
    where = locate_state_dir(state_dir)
    return Located(where.path / name, f"state directory: {where.how}")


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}


def image_folder(root: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """The image files under root/<class>/ and their labels; a folder that is not a class of
    the zoo is an error (a typo would silently drop a class)."""
    import numpy as np

    if not root.is_dir():
        fail(f"{root}: not a folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    unknown = [p.name for p in folders if p.name not in classes]
    if unknown:
        fail(f"{root}: folders {', '.join(unknown)} are not classes of the zoo ({', '.join(classes)})")
    files: list[Path] = []
    labels: list[int] = []
    for folder in folders:
        found = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [classes.index(folder.name)] * len(found)
    if not files:
        fail(f"{root}: no images (expected {root}/<class>/*.png or .jpg, classes {', '.join(classes)})")
    return files, np.array(labels, dtype=np.int64)


def decode_files(files: list[Path], size: int, resize: str) -> np.ndarray:
    """Each file decoded exactly as a request body of it would be."""
    import numpy as np

    from agent.errors import BadInput
    from agent.serving.codec import decode_to_input, open_image

    out = []
    for path in files:
        try:
            out.append(decode_to_input(open_image(path.read_bytes()), size, resize=resize))
        except (BadInput, OSError) as exc:
            fail(f"{path}: {exc}")
    return np.concatenate(out)
