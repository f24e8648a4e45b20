"""The demo's directory: it removes only the log files an earlier demo run wrote there.

A run writes a marker file (``MARKER``) before its first record, naming the files it may create:
``demo.log`` and its rotated backups. The next run removes those, and only those, and says so. A
``demo.log*`` file that no marker names is someone else's: the demo refuses to touch it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

__all__ = ["MARKER", "DemoDirectoryError", "prepare"]

MARKER = ".logfunnel-demo.json"
LOG_NAME = "demo.log"


class DemoDirectoryError(Exception):
    """The directory holds files the demo did not create, and would have to overwrite."""


def own_names(backups: int) -> list[str]:
    """The names a ``RotatingFileHandler`` for ``demo.log`` with *backups* backups can create."""
    return [LOG_NAME] + [f"{LOG_NAME}.{n}" for n in range(1, backups + 1)]


def _claimed(directory: Path) -> set[str]:
    try:
        marker = json.loads((directory / MARKER).read_text(encoding="utf-8"))
        return {name for name in marker["files"] if isinstance(name, str) and "/" not in name}
    except (OSError, ValueError, KeyError, TypeError):
        return set()


def prepare(directory: Path, backups: int) -> list[str]:
    """Make *directory* ready for a run; return the names of the earlier run's files it removed.

    Raises ``DemoDirectoryError``, having removed nothing, if a ``demo.log*`` file there was not
    written by an earlier demo run.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DemoDirectoryError(
            f"cannot use {directory} for the demo's files: {exc.strerror or exc}"
        ) from exc
    present = sorted(p.name for p in directory.glob(LOG_NAME + "*"))
    claimed = _claimed(directory)
    foreign = [name for name in present if name not in claimed]
    if foreign:
        raise DemoDirectoryError(
            f"{directory} holds {', '.join(foreign)}, which an earlier demo run did not write; "
            f"the demo removes only its own files. Give it another --dir, or move those files away."
        )
    removed = [name for name in present if name in claimed]
    for name in removed:
        os.unlink(directory / name)
    marker = {
        "written_by": "logfunnel demo",
        "note": "the next demo run in this directory removes these files, and only these",
        "files": own_names(backups),
    }
    (directory / MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return sorted(removed, key=lambda name: (len(name), name))
