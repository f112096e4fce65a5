"""Atomic file writes: a reader, or a process started after a crash, sees the old file or the new one, never half.

Shared by the disk tier (Arrow volumes), the cache's experiment registry and the validation
actor's run state, which all must survive a process killed mid-write.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import IO, Any, Callable

__all__ = ["atomic_write"]


def atomic_write(path: Path, write: Callable[[IO[Any]], None], mode: str = "wb", suffix: str = "") -> None:
    """Call ``write`` on a temp file beside ``path``, fsync it, then rename it over ``path``.

    On any error (or interruption) the temp file is removed and ``path`` is left untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=suffix)
    try:
        with os.fdopen(fd, mode) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
