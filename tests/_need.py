"""Missing programs and modules: a test that needs one fails under CI (``CI=true``) and skips elsewhere,
saying what to install."""

from __future__ import annotations

import importlib
import os
import shutil
from types import ModuleType
from typing import NoReturn

import pytest


def missing(reason: str) -> NoReturn:
    """Fail under CI, skip elsewhere."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing requirement fails the run)")
    pytest.skip(reason)


def need_program(name: str, install: str) -> str:
    """The path of program *name*, or fail/skip naming the package that provides it."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")
    if path is None:
        missing(f"{name} is not installed (install {install})")
    return path


def need_module(name: str, install: str | None = None) -> ModuleType:
    """Import module *name*, or fail/skip naming what to install."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        missing(f"cannot import {name} ({exc}); install {install or name}")
