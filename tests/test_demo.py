"""The README's first command stays true: the sandboxed bootstrap runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dockerd import needs_dockerd
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.docker
def test_the_demo_bootstraps_reports_and_checks_a_simulated_node() -> None:
    reason = needs_dockerd() or (None if os.geteuid() == 0 else "needs root")
    if reason:
        skip_or_fail("dockerd", reason)
    r = subprocess.run(
        [sys.executable, "-m", "tests.sandbox", "t4"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    assert (
        "runtime      changed       docker: changed /etc/docker/daemon.json; reloaded; verified"
        in (out)
    )
    assert "apply all: ok · 1 ok, 3 unchanged" in out  # the second apply changed nothing
    assert "check all on gpu-node-1: pass · 13 pass" in out
    assert "nvidia.com/GPUReady   True" in out  # kubectl describe node
    assert "T4" in out
