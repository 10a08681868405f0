"""What the tests that start real daemons share: when they may skip, and process checks.

A test that needs a real part (dockerd, containerd) skips with the reason on a laptop that
lacks it, but fails under CI (``CI=true``): a green CI always means the real part ran.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Optional

import pytest


def needs(*binaries: str, package: str) -> Optional[str]:
    """Why ``binaries`` (run as root) cannot run here, or None."""
    if os.geteuid() != 0:
        return f"{binaries[0]} needs root"
    if not all(shutil.which(b) for b in binaries):
        return f"{binaries[0]} not installed (apt-get install {package})"
    return None


def skip_or_fail(part: str, reason: str) -> None:
    """Skip on a laptop; fail under CI, which must exercise ``part``."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"CI must exercise the real {part}: {reason}")
    pytest.skip(reason)


def alive(pid: int) -> bool:
    """Running (a zombie, exited but not yet reaped by whoever started it, is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
