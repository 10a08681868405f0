"""Shared fixtures: the simulated GPU, the test API server."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable

import pytest
from hypothesis import HealthCheck, settings

from tests.dockerd import needs_dockerd
from tests.fakenvml.build import build, profile
from tests.kubeapi import KubeAPIServer
from tests.notify import NotifySocket
from tests.realparts import skip_or_fail
from tests.sandbox import Sandbox

_SESSION_START = time.time()  # conftest is imported as the session starts

# Property tests never flake: no per-example deadline (this machine's speed varies with
# what else runs), no health check that fails on a slow generator, and under CI the same
# examples every run (derandomize) so a red CI always reproduces.
settings.register_profile(
    "nodeagent",
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=os.environ.get("CI") == "true",
)
settings.load_profile("nodeagent")


@dataclasses.dataclass(frozen=True)
class FakeNVML:
    """The built fake ``libnvidia-ml.so.1`` and helpers to point NVML users at a profile."""

    lib: Path

    def profile(self, name: str) -> Path:
        return profile(name)

    def data(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(profile(name).read_text())
        return data

    def env(self, name_or_path: str | Path, **extra: str) -> dict[str, str]:
        """Environment for a subprocess whose NVML is the simulated GPU."""
        path = Path(name_or_path) if isinstance(name_or_path, Path) else profile(name_or_path)
        return {
            **os.environ,
            "FAKE_NVML_PROFILE": str(path),
            "LD_LIBRARY_PATH": str(self.lib.parent),
            **extra,
        }


@pytest.fixture(scope="session")
def fake_nvml(tmp_path_factory: pytest.TempPathFactory) -> FakeNVML:
    return FakeNVML(lib=build(tmp_path_factory.mktemp("fakenvml")))


@pytest.fixture
def use_profile(fake_nvml: FakeNVML, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Point this process's NVML (through ``detect(library=...)``) at a profile."""

    def use(name_or_path: str | Path) -> str:
        path = name_or_path if isinstance(name_or_path, Path) else profile(name_or_path)
        monkeypatch.setenv("FAKE_NVML_PROFILE", str(path))
        return str(fake_nvml.lib)

    return use


@pytest.fixture
def docker_sandbox(tmp_path: Path, fake_nvml: FakeNVML) -> Iterator[Callable[..., Sandbox]]:
    """Start a simulated node with a real dockerd (tests/sandbox.py), its config keys
    overridden as given; stopped afterwards. Skipped without dockerd, failed when CI=true."""
    started: list[Sandbox] = []

    def start(**config: Any) -> Sandbox:
        reason = needs_dockerd()
        if reason:
            skip_or_fail("dockerd", reason)
        box = Sandbox(tmp_path / f"sb{len(started)}", lib=fake_nvml.lib)
        started.append(box)
        return box.start(**config)

    try:
        yield start
    finally:
        for box in started:
            box.stop()


@pytest.fixture
def notify() -> Iterator[NotifySocket]:
    """A notify socket to point ``NOTIFY_SOCKET`` at (tests/notify.py), closed afterwards."""
    n = NotifySocket()
    try:
        yield n
    finally:
        n.close()


@pytest.fixture
def srv(tmp_path: Path) -> Iterator[KubeAPIServer]:
    """A started test API server (tests/kubeapi) on loopback, stopped afterwards."""
    server = KubeAPIServer(tmp_path / "kubeapi")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """The boot test's timings in CI's log (tests/test_boot.py writes them)."""
    path = Path(__file__).resolve().parents[1] / "build" / "boot-timings.json"
    if not path.exists() or path.stat().st_mtime < _SESSION_START:
        return
    terminalreporter.section("boot timings (systemd-nspawn, seconds after boot)")
    for scenario, t in json.loads(path.read_text()).items():
        if isinstance(t, dict):  # step → seconds after the machine started, in order
            steps = " · ".join(f"{step} {float(s):.1f}" for step, s in t.items())
            terminalreporter.write_line(f"{scenario}: {steps}")
