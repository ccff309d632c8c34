"""Whole-file writes that concurrent writers (data-parallel ranks) cannot tear.

Each call writes to its own temporary file in the target's folder and renames it over
the target, so a reader sees the old or the new content, never half of one, and two
ranks writing the same file cannot remove each other's temporary file. The file gets the mode
a plain ``open`` would give (0644 under the usual umask 022), not ``mkstemp``'s 0600, so
collaborators sharing a results folder on a cluster can read it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


# read once at import (os.umask can only be read by setting it)
FILE_MODE = 0o666 & ~_umask()


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
