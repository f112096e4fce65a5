"""Experiment ids: one safe character set, checked wherever an id enters (SDK, CLI, REST API).

An id becomes a folder name under the run folder (``state/<id>/validator.json``), a Ray
Train run name, an actor name and a URL segment, so it must not hold ``/``, ``..``, control
characters or anything a shell or terminal would interpret. The check is one pure function
so every entry point refuses the same ids with the same message.
"""

from __future__ import annotations

import re
from pathlib import Path

from common.errors import InvalidIdError

__all__ = ["ID_RULE", "MAX_ID_LENGTH", "check_experiment_id", "contained_folder"]

MAX_ID_LENGTH = 128
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,%d}" % (MAX_ID_LENGTH - 1))
ID_RULE = (f"1 to {MAX_ID_LENGTH} characters of A-Z a-z 0-9 . _ -, starting with a letter or digit, "
           "without '..' (choose a name such as 'spleen-novograd-1')")


def check_experiment_id(value: object, what: str = "experiment id") -> str:
    """``value`` itself if it is a safe id; :class:`InvalidIdError` naming it and the rule otherwise."""
    if not isinstance(value, str) or not _ID.fullmatch(value) or ".." in value:
        raise InvalidIdError(what, str(value), ID_RULE)
    return value


def contained_folder(root: Path, experiment_id: str) -> Path:
    """``root / experiment_id`` after checking the id, and that the resolved folder is still inside ``root``."""
    folder = (root / check_experiment_id(experiment_id)).resolve()
    if not folder.is_relative_to(root.resolve()):  # a symlink named like the id pointing elsewhere
        raise InvalidIdError("experiment id", experiment_id, f"its folder {folder} lies outside {root}")
    return folder
