"""The docker engine against a real dockerd (Debian's docker.io) started by the tests.

Every dockerd here has its own data root, exec root, socket and pidfile under a temp dir;
the machine's /etc/docker is never touched. Restarts go through `tests/dockerd.py restart`,
the stand-in for `systemctl restart docker`; reloads are a SIGHUP to the pidfile's pid.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from nodeagent.config import Config, DockerConfig, RuntimeConfig
from nodeagent.errors import StepFailed
from nodeagent.paths import HostRoot
from nodeagent.runtime.docker import DockerEngine
from nodeagent.runtime.engine import ACTIVATE_RELOAD, ACTIVATE_RESTART
from tests.dockerd import BASE_CONFIG, Dockerd, needs_dockerd, write_runtime_standin
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.docker


@pytest.fixture
def dockerd() -> Iterator[Dockerd]:
    reason = needs_dockerd()
    if reason:
        skip_or_fail("dockerd", reason)
    d = Dockerd(Path(tempfile.mkdtemp(prefix="nad.", dir="/tmp")))
    write_runtime_standin(d.root)
    d.config.parent.mkdir(parents=True)
    d.config.write_text(
        json.dumps(
            {"insecure-registries": ["10.0.0.5:5000"], **BASE_CONFIG, "log-level": "info"},
            indent=2,
        )
        + "\n"
    )
    try:
        yield d
    finally:
        d.teardown()


def config_for(d: Dockerd, **runtime: object) -> Config:
    docker = DockerConfig(
        config_file="/etc/docker/daemon.json",
        pidfile="/run/docker.pid",
        host=d.host,
        restart_command=(
            sys.executable,
            str(REPO / "tests" / "dockerd.py"),
            "restart",
            str(d.base),
        ),
    )
    runtime.setdefault("verify_timeout_s", 20.0)
    rt = RuntimeConfig(engine="docker", docker=docker, **runtime)  # type: ignore[arg-type]
    return Config(runtime=rt)


def engine(d: Dockerd, **runtime: object) -> DockerEngine:
    return DockerEngine(config_for(d, **runtime), HostRoot(d.root))


def start(d: Dockerd) -> None:
    assert d.start(), d.log.read_text()[-2000:]


def test_reload_makes_nvidia_default_and_running_container_survives(dockerd: Dockerd) -> None:
    start(dockerd)
    dockerd.import_busybox()
    before = dockerd.docker("run", "-d", "--network", "none", "--runtime", "runc", "bb:local",
                            "sleep", "600")  # fmt: skip
    pid = dockerd.pid
    eng = engine(dockerd)
    plan = eng.plan(eng.read())
    assert plan.activation == ACTIVATE_RELOAD
    result = eng.apply(plan)
    assert (result.activation, result.verified) == (ACTIVATE_RELOAD, True)
    info = dockerd.info()
    assert info["DefaultRuntime"] == "nvidia"
    assert "nvidia" in info["Runtimes"]
    assert dockerd.pid == pid  # not restarted
    assert dockerd.reloads() == 1
    running = dockerd.docker("ps", "-q", "--no-trunc").split()
    assert before in running
    # the file kept every key, in order, and the indentation
    data = json.loads(dockerd.config.read_text())
    assert list(data)[:2] == ["insecure-registries", "storage-driver"]
    assert data["insecure-registries"] == ["10.0.0.5:5000"]
    assert data["runtimes"] == {"nvidia": {"path": "nvidia-container-runtime", "runtimeArgs": []}}
    assert dockerd.config.read_text().startswith('{\n  "insecure-registries"')
    # a container started now goes through the nvidia runtime (the stand-in records it)
    assert dockerd.docker("run", "--rm", "--network", "none", "bb:local", "echo", "hi") == "hi"
    calls = (dockerd.root / "nvidia-runtime-calls").read_text()
    assert " create " in calls

    # idempotence: nothing written, nothing signalled
    st = dockerd.config.stat()
    again = engine(dockerd)
    plan2 = again.plan(again.read())
    assert not plan2.changed
    result2 = again.apply(plan2)
    assert result2.written == ()
    st2 = dockerd.config.stat()
    assert (st.st_ino, st.st_mtime_ns) == (st2.st_ino, st2.st_mtime_ns)
    time.sleep(0.3)
    assert dockerd.reloads() == 1
    assert dockerd.pid == pid


def test_restart_with_allow_restart_comes_back_verified(dockerd: Dockerd) -> None:
    start(dockerd)
    pid = dockerd.pid
    eng = engine(dockerd, restart_mode="restart", allow_restart=True)
    plan = eng.plan(eng.read())
    assert plan.activation == ACTIVATE_RESTART
    result = eng.apply(plan)
    assert (result.activation, result.verified) == (ACTIVATE_RESTART, True)
    assert dockerd.pid != pid
    assert dockerd.info()["DefaultRuntime"] == "nvidia"


def test_restart_refused_while_containers_run_without_live_restore(dockerd: Dockerd) -> None:
    start(dockerd)
    dockerd.import_busybox()
    dockerd.docker("run", "-d", "--network", "none", "bb:local", "sleep", "600")
    before = dockerd.config.read_bytes()
    eng = engine(dockerd, restart_mode="restart")
    with pytest.raises(StepFailed, match="containers are running"):
        eng.apply(eng.plan(eng.read()))
    assert dockerd.config.read_bytes() == before
    assert len(dockerd.docker("ps", "-q").split()) == 1


def test_docker_that_will_not_start_is_rolled_back(dockerd: Dockerd) -> None:
    # dockerd is started with --default-runtime from somewhere the agent does not read:
    # with "default-runtime" in daemon.json too it refuses to start ("specified both as a
    # flag and in the configuration file"), so the restart fails and must be undone.
    dockerd.extra_args = ["--default-runtime", "runc"]
    start(dockerd)
    before = dockerd.config.read_text()
    eng = engine(dockerd, restart_mode="restart", allow_restart=True)
    with pytest.raises(StepFailed, match="restored the previous") as e:
        eng.apply(eng.plan(eng.read()))
    assert "it is running again" in str(e.value)
    assert dockerd.config.read_text() == before
    assert dockerd.info()["DefaultRuntime"] == "runc"
    backups = list((dockerd.root / "var/lib/nodeagent/backups").glob("daemon.json.*.bak"))
    assert [b.read_text() for b in backups] == [before]


def silent_reload(d: Dockerd, **runtime: object) -> DockerEngine:
    """An engine whose reload "succeeds" without dockerd re-reading anything, like a
    `systemctl reload` that returned 0 while the daemon kept its old config
    (NVIDIA/ansible-role-nvidia-docker#12): only verification can tell."""
    cfg = config_for(d, verify_timeout_s=2.0, **runtime)
    docker = dataclasses.replace(cfg.runtime.docker, pidfile=None, reload_command=("/bin/true",))
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, docker=docker))
    return DockerEngine(cfg, HostRoot(d.root))


def test_reload_that_does_not_take_is_undone_when_restart_not_allowed(dockerd: Dockerd) -> None:
    start(dockerd)
    dockerd.import_busybox()
    dockerd.docker("run", "-d", "--network", "none", "bb:local", "sleep", "600")
    before = dockerd.config.read_text()
    pid = dockerd.pid
    eng = silent_reload(dockerd)
    with pytest.raises(StepFailed, match="did not take the new"):
        eng.apply(eng.plan(eng.read()))
    assert dockerd.config.read_text() == before
    assert dockerd.pid == pid  # never restarted: a container was running
    assert len(dockerd.docker("ps", "-q").split()) == 1


def test_reload_that_does_not_take_falls_back_to_restart(dockerd: Dockerd) -> None:
    start(dockerd)
    pid = dockerd.pid
    eng = silent_reload(dockerd)
    result = eng.apply(eng.plan(eng.read()))
    assert (result.activation, result.verified) == (ACTIVATE_RESTART, True)
    assert result.message == "reload did not take; restarted"
    assert dockerd.pid != pid
    assert dockerd.info()["DefaultRuntime"] == "nvidia"


def test_dry_run_cli_prints_a_diff_and_changes_nothing(dockerd: Dockerd) -> None:
    start(dockerd)
    cfg = dockerd.base / "config.yaml"
    cfg.write_text(
        "runtime:\n  engine: docker\n  docker:\n"
        f"    pidfile: /run/docker.pid\n    host: {dockerd.host}\n"
        f"    restart_command: [{sys.executable}, {REPO}/tests/dockerd.py, restart,"
        f" {dockerd.base}]\n"
    )
    before = dockerd.config.read_bytes()
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(dockerd.root), "--config", str(cfg),
         "runtime", "configure", "--dry-run"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "--- a/etc/docker/daemon.json" in r.stdout
    assert '+  "default-runtime": "nvidia"' in r.stdout
    assert r.stdout.rstrip().endswith(
        "then reload (only reloadable keys change (default-runtime, runtimes))"
    )
    assert dockerd.config.read_bytes() == before
    assert dockerd.reloads() == 0
    # and for real, through the CLI
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(dockerd.root), "--config", str(cfg),
         "runtime", "configure"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "docker: changed /etc/docker/daemon.json; reload; verified"
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(dockerd.root), "--config", str(cfg),
         "rollback"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("docker: restored /etc/docker/daemon.json from daemon.json.")
    assert r.stdout.rstrip().endswith("; restart")  # a reload would not unset default-runtime
    assert dockerd.config.read_bytes() == before
    assert dockerd.info()["DefaultRuntime"] == "runc"


def pause_env(marker: Path) -> dict[str, str]:
    """Make the agent stop between writing daemon.json's temp file and renaming it."""
    return {
        "NODEAGENT_TEST_PAUSE_BEFORE_RENAME": str(marker),
        "NODEAGENT_TEST_PAUSE_NAME": "daemon.json",
    }


def test_kill_9_between_write_and_rename_leaves_old_or_new(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_runtime_standin(root)
    daemon = root / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    old = '{\n  "log-driver": "journald"\n}\n'
    daemon.write_text(old)
    marker = tmp_path / "paused"
    code = (
        "from nodeagent.config import Config\n"
        "from nodeagent.paths import HostRoot\n"
        "from nodeagent.runtime.docker import DockerEngine\n"
        "import sys\n"
        "e = DockerEngine(Config(), HostRoot(sys.argv[1]))\n"
        "e.apply(e.plan(e.read()))\n"
    )
    env = {**os.environ, **pause_env(marker)}
    p = subprocess.Popen([sys.executable, "-c", code, str(root)], cwd=REPO, env=env)
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marker.exists()
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    assert daemon.read_text() == old  # the old file, whole
    temp = list(daemon.parent.glob(".daemon.json.nodeagent-tmp-*"))
    assert len(temp) == 1  # the new content was complete in the temp file
    assert json.loads(temp[0].read_text())["default-runtime"] == "nvidia"
    # the next run completes the job
    r = subprocess.run([sys.executable, "-c", code, str(root)], cwd=REPO, timeout=60)
    assert r.returncode == 0
    data = json.loads(daemon.read_text())
    assert data["log-driver"] == "journald"
    assert data["default-runtime"] == "nvidia"
    assert not list(daemon.parent.glob(".daemon.json.nodeagent-tmp-*"))  # stale temp cleaned


def test_two_agents_are_serialized_by_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "root"
    write_runtime_standin(root)
    daemon = root / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.write_text('{"debug": true}\n')
    marker = tmp_path / "paused"
    code = (
        "from nodeagent.config import Config\n"
        "from nodeagent.paths import HostRoot\n"
        "from nodeagent.runtime.docker import DockerEngine\n"
        "import sys\n"
        "e = DockerEngine(Config(), HostRoot(sys.argv[1]))\n"
        "print(e.apply(e.plan(e.read())).message or 'written')\n"
    )
    first = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True,
        env={**os.environ, **pause_env(marker)},
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = subprocess.Popen(
        [sys.executable, "-c", code, str(root)], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    time.sleep(1.0)
    assert second.poll() is None  # waiting for the lock the first one holds
    marker.unlink()  # let the first one rename and finish
    out1, _ = first.communicate(timeout=30)
    out2, _ = second.communicate(timeout=30)
    assert (first.returncode, second.returncode) == (0, 0)
    # (the last line is the result; structlog, unconfigured here, logs to stdout before it)
    assert (
        out1.strip().splitlines()[-1] == "docker is not running: it reads the file when it starts"
    )
    assert (
        out2.strip().splitlines()[-1] == "unchanged"
    )  # re-planned under the lock: nothing left to do
    assert json.loads(daemon.read_text())["default-runtime"] == "nvidia"
    backups = list((root / "var/lib/nodeagent/backups").glob("daemon.json.*.bak"))
    assert len(backups) == 1
