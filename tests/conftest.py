"""Whole-suite set-up: kvmops' bytecode is up to date before any test starts a kvmops process.

The integration and end-to-end suites start hundreds of ``python -m reconciler``
processes.  Where ``PYTHONDONTWRITEBYTECODE`` is set (some images set it) and a source
file changed since ``scripts/setup.sh`` byte-compiled the package, every one of them
would compile the changed modules again: with the whole package stale, 0.2 s or more
per process.  Compiling once here costs nothing when the .pyc files are current.
"""

from __future__ import annotations

import compileall
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "reconciler"


def pytest_sessionstart(session) -> None:
    compileall.compile_dir(str(PACKAGE), quiet=1)
