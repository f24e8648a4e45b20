"""A 1 MiB tmpfs under a test's own folder, for tests of a full disk (root only)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def tiny_tmpfs(folder: Path, size: str = "1m") -> Iterator[Path]:
    """Mount a tmpfs of *size* at *folder*/disk and unmount it afterwards. Fails under CI=true if it
    cannot be mounted; elsewhere skips, saying why."""
    mount = folder / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True, text=True
    )
    if done.returncode != 0:
        reason = f"cannot mount a {size} tmpfs for a disk-full test (needs root): {done.stderr.strip()}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(folder: Path) -> Path:
    """Fill the file system of *folder* up to its last byte; return the filler, to free it later."""
    filler = folder / "filler"
    with open(filler, "wb", buffering=0) as out:
        for size in (1 << 16, 1 << 12, 1 << 8, 1):
            try:
                while True:
                    out.write(b"x" * size)
            except OSError:
                continue
    return filler
