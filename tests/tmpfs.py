"""A small tmpfs mounted for one test: a file system that really fills up.

Mounting needs root (or CAP_SYS_ADMIN).  Where it is not permitted the test is skipped
with the reason, except under CI=true, where it fails: CI must run the full-disk tests.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1"}


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = "2m") -> Iterator[Path]:
    """Mount a tmpfs of ``size`` on ``path`` (created), unmount it on exit.  Stop every
    process that has files of it open or mapped before leaving the block."""
    path.mkdir(parents=True, exist_ok=True)
    try:
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs",
                                 str(path)], capture_output=True, text=True)
        error = result.stderr.strip() if result.returncode else ""
    except OSError as exc:
        error = str(exc)
    if error:
        reason = f"cannot mount a {size} tmpfs on {path} (needs root): {error}"
        if _in_ci():
            pytest.fail(f"{reason} (CI=true: the full-disk tests must run)", pytrace=False)
        pytest.skip(reason)
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy
