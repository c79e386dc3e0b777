"""The code stays ruff clean and mypy-strict clean (rules in pyproject.toml), so a review reads the change, not the noise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_ruff_finds_nothing() -> None:
    checked = subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", "."], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_mypy_strict_finds_nothing() -> None:
    """Every module of nbpool (shared/ and services/, as the package nbpool.*) type-checks under
    mypy --strict. The strict editable install (Makefile) gives mypy the package as it is imported."""
    checked = subprocess.run([sys.executable, "-m", "mypy", "--no-incremental", "-p", "nbpool"], cwd=ROOT,
                             capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
