"""The docker engine against a real dockerd (Debian's docker.io) started by the tests.

Every dockerd here has its own data root, exec root, socket and pidfile under a temp dir;
the machine's /etc/docker is never touched. Restarts go through `tests/dockerd.py restart`,
the stand-in for `systemctl restart docker`; reloads are a SIGHUP to the pidfile's pid.

The tests against a running dockerd run on each docker of the runtime matrix
(tests/runtimes.py: 20.10, 26.1 and 28.5 from the Debian suites, each with its suite's
docker CLI and containerd; ids ``docker-bookworm`` ...); the tests of the write path without
a dockerd run once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Callable

import pytest

from nodeagent.config import Config, DockerConfig, RuntimeConfig
from nodeagent.errors import StepFailed
from nodeagent.host.paths import HostRoot
from nodeagent.host.service import ServiceControl
from nodeagent.runtime.docker.engine import DockerEngine
from nodeagent.runtime.engine import Activation
from tests.debcache import FetchError
from tests.dockerd import BASE_CONFIG, Dockerd, needs_dockerd, write_runtime_standin
from tests.realparts import skip_or_fail
from tests.runtimes import MATRIX, runtime

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.docker


DOCKERS = [suite for kind, suite in MATRIX if kind == "docker"]


@pytest.fixture(params=DOCKERS, ids=[f"docker-{s}" for s in DOCKERS])
def dockerd(request: pytest.FixtureRequest) -> Iterator[Dockerd]:
    """A dockerd of the matrix (not started), with the operator's daemon.json."""
    reason = needs_dockerd()
    if reason:
        skip_or_fail("dockerd", reason)
    base = Path(tempfile.mkdtemp(prefix="nad.", dir="/tmp"))
    try:
        d = Dockerd(base, runtime("docker", request.param))
    except FetchError as e:
        skip_or_fail(f"docker of {request.param}", str(e))
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
    assert plan.activation == Activation.RELOAD
    result = eng.apply(plan)
    assert (result.activation, result.verified) == (Activation.RELOAD, True)
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
    assert plan.activation == Activation.RESTART
    result = eng.apply(plan)
    assert (result.activation, result.verified) == (Activation.RESTART, True)
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
    assert (result.activation, result.verified) == (Activation.RESTART, True)
    assert result.message == (
        "docker did not take the new /etc/docker/daemon.json on reload (see docker's log); "
        "restarted docker; it shows the nvidia runtime"
    )
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
    out = r.stdout.strip()
    assert out.startswith("docker: changed /etc/docker/daemon.json; "), out
    assert out.endswith("; verified (reloaded docker; it shows the nvidia runtime)"), out
    r = subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(dockerd.root), "--config", str(cfg),
         "rollback"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("docker: restored /etc/docker/daemon.json from daemon.json.")
    # a reload would not unset default-runtime: restarted
    assert r.stdout.rstrip().endswith("; restarted docker")
    assert dockerd.config.read_bytes() == before
    assert dockerd.info()["DefaultRuntime"] == "runc"


# --- the write path without docker: crash points, the lock, rollback ---------------------

ENGINE_RUN = (
    "import json, sys\n"
    "from nodeagent.config import Config\n"
    "from nodeagent.host.paths import HostRoot\n"
    "from nodeagent.runtime.docker.engine import DockerEngine\n"
    "e = DockerEngine(Config(), HostRoot(sys.argv[1]))\n"
    "r = e.apply(e.plan(e.read()))\n"
    "print(json.dumps({'written': list(r.written), 'message': r.message}))\n"
)


def crashpoint(root: Path, *opts: str, args: tuple[str, ...] = ()) -> list[str]:
    """argv: the nodeagent CLI under tests/crashpoint.py (``opts``), configuring docker."""
    cli = ("--root", str(root), "runtime", "configure", "--runtime", "docker", *args)
    return [sys.executable, "-m", "tests.crashpoint", *opts, "--", *cli]


def nodeagent(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "nodeagent", "--root", str(root), *args],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def opened(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(path) for fd in fds.iterdir())
    except OSError:
        return False


def seed(root: Path, text: str = '{\n  "log-driver": "journald"\n}\n') -> Path:
    write_runtime_standin(root)
    daemon = root / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.write_text(text)
    return daemon


def test_kill_9_between_write_and_rename_leaves_old_or_new(tmp_path: Path) -> None:
    root = tmp_path / "root"
    daemon = seed(root)
    old = daemon.read_bytes()
    r = subprocess.run(
        crashpoint(root, "--op", "replace", "--name", "daemon.json", "--nth", "1"),
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == -signal.SIGKILL, r.stderr
    assert daemon.read_bytes() == old  # the old file, whole
    temp = list(daemon.parent.glob(".daemon.json.nodeagent-tmp-*"))
    assert len(temp) == 1  # the new content was complete in the temp file
    assert json.loads(temp[0].read_text())["default-runtime"] == "nvidia"
    # the next run completes the job
    r = nodeagent(root, "runtime", "configure", "--runtime", "docker")
    assert r.returncode == 0, r.stderr
    data = json.loads(daemon.read_text())
    assert data["log-driver"] == "journald"
    assert data["default-runtime"] == "nvidia"
    assert not list(daemon.parent.glob(".daemon.json.nodeagent-tmp-*"))  # stale temp swept


def test_two_agents_are_serialized_by_the_lock(tmp_path: Path) -> None:
    root = tmp_path / "root"
    daemon = seed(root, '{"debug": true}\n')
    old = daemon.read_bytes()
    lock = root / "run/nodeagent/nodeagent.lock"
    marker = tmp_path / "paused"
    # The first pauses holding the lock, its new file written but not yet renamed.
    pause = ("--op", "replace", "--name", "daemon.json", "--nth", "1", "--action", "pause")
    first = subprocess.Popen(
        crashpoint(root, *pause, "--marker", str(marker)),
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for("the first agent to pause", marker.exists)
    assert lock.read_text() == f"{first.pid}\n"  # the holder writes its pid
    second = subprocess.Popen(
        [sys.executable, "-c", ENGINE_RUN, str(root)],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for("the second agent to open the lock", lambda: opened(second.pid, lock))
    time.sleep(0.5)  # ample for a second holder to write its pid or the file
    assert second.poll() is None  # still waiting ...
    assert lock.read_text() == f"{first.pid}\n"  # ... without the lock
    assert daemon.read_bytes() == old  # and nothing written by either
    marker.unlink()  # let the first one rename and finish
    out1, err1 = first.communicate(timeout=30)
    out2, err2 = second.communicate(timeout=30)
    assert (first.returncode, second.returncode) == (0, 0), err1 + err2
    assert "docker is not running: it reads the file when it starts" in out1
    result = json.loads(out2.strip().splitlines()[-1])  # (structlog, unconfigured, logs first)
    # re-read under the lock and re-planned: nothing left to do, nothing written
    assert result == {
        "written": [],
        "message": "unchanged (another run had already configured it)",
    }
    assert json.loads(daemon.read_text())["default-runtime"] == "nvidia"
    backups = list((root / "var/lib/nodeagent/backups").glob("daemon.json.*.bak"))
    assert len(backups) == 1


def backups_of(root: Path) -> list[str]:
    d = root / "var/lib/nodeagent/backups"
    return sorted(p.suffix for p in d.iterdir()) if d.exists() else []


def test_rollback_removes_a_file_nodeagent_created_and_twice_is_once(tmp_path: Path) -> None:
    write_runtime_standin(tmp_path)
    daemon = tmp_path / "etc/docker/daemon.json"
    r = nodeagent(tmp_path, "runtime", "configure", "--runtime", "docker")
    assert r.returncode == 0, r.stderr
    assert json.loads(daemon.read_text())["default-runtime"] == "nvidia"
    assert backups_of(tmp_path) == [".absent"]  # it did not exist before
    r = nodeagent(tmp_path, "rollback", "--runtime", "docker")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(
        "docker: removed /etc/docker/daemon.json (nodeagent had created it; daemon.json."
    ), r.stdout
    assert not daemon.exists()
    assert backups_of(tmp_path) == [".absent", ".undone"]  # what it removed is kept
    for _ in range(2):  # a second (and third) rollback changes nothing and says so
        r = nodeagent(tmp_path, "rollback", "--runtime", "docker")
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith(
            "docker: /etc/docker/daemon.json is already absent, as its newest backup (daemon.json."
        ), r.stdout
        assert r.stdout.endswith(".absent) records; nothing to roll back\n")
        assert not daemon.exists()
        assert backups_of(tmp_path) == [".absent", ".undone"]


def test_rollback_without_any_backup_says_there_is_nothing_to_undo(tmp_path: Path) -> None:
    daemon = seed(tmp_path)
    before = daemon.read_bytes()
    r = nodeagent(tmp_path, "rollback", "--runtime", "docker")
    assert (r.returncode, r.stdout) == (
        0,
        "docker: /etc/docker/daemon.json: no backup; nothing to roll back\n",
    )
    assert daemon.read_bytes() == before


@pytest.mark.parametrize("link", ["../../data/docker/daemon.json", "/data/docker/daemon.json"])
def test_write_and_rollback_keep_crlf_mode_and_the_symlink(tmp_path: Path, link: str) -> None:
    write_runtime_standin(tmp_path)
    target = tmp_path / "data/docker/daemon.json"
    target.parent.mkdir(parents=True)
    original = b'{\r\n  "log-driver": "journald"\r\n}\r\n'
    target.write_bytes(original)
    target.chmod(0o640)
    daemon = tmp_path / "etc/docker/daemon.json"
    daemon.parent.mkdir(parents=True)
    daemon.symlink_to(link)
    eng = DockerEngine(Config(), HostRoot(tmp_path))
    result = eng.apply(eng.plan(eng.read()))
    assert result.written == ("/etc/docker/daemon.json",)
    assert daemon.is_symlink() and os.readlink(daemon) == link  # written through the link
    new = target.read_bytes()
    assert new.count(b"\r\n") == new.count(b"\n") > 3  # CRLF kept on every line
    assert json.loads(new)["default-runtime"] == "nvidia"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    again = eng.rollback()
    assert again.message.startswith("restored /etc/docker/daemon.json from daemon.json.")
    assert daemon.is_symlink() and os.readlink(daemon) == link
    assert target.read_bytes() == original  # exact bytes
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    undone = list((tmp_path / "var/lib/nodeagent/backups").glob("daemon.json.*.undone"))
    assert [u.read_bytes() for u in undone] == [new]
    twice = eng.rollback()
    assert twice.written == ()
    assert twice.message.startswith("/etc/docker/daemon.json already matches its newest backup")
    assert twice.message.endswith(".bak); nothing to roll back")
    assert target.read_bytes() == original


def test_rollback_replaces_a_malformed_file(tmp_path: Path) -> None:
    daemon = seed(tmp_path)
    original = daemon.read_bytes()
    eng = DockerEngine(Config(), HostRoot(tmp_path))
    eng.apply(eng.plan(eng.read()))
    daemon.write_bytes(b'{"runtimes": null, "default-runtime": ')  # an operator's bad edit
    r = nodeagent(tmp_path, "rollback", "--runtime", "docker")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("docker: restored /etc/docker/daemon.json from daemon.json.")
    assert daemon.read_bytes() == original
    undone = list((tmp_path / "var/lib/nodeagent/backups").glob("daemon.json.*.undone"))
    assert [u.read_bytes() for u in undone] == [b'{"runtimes": null, "default-runtime": ']


# --- the pidfile: only a running dockerd is signalled -----------------------------------


def start_sleep() -> subprocess.Popen[bytes]:
    """A live process that is not dockerd (its name checked: exec follows fork)."""
    p = subprocess.Popen(["sleep", "600"])
    wait_for("sleep to start", lambda: Path(f"/proc/{p.pid}/comm").read_text() == "sleep\n")
    return p


def test_pidfile_of_another_process_is_never_signalled(tmp_path: Path) -> None:
    pidfile = tmp_path / "docker.pid"
    svc = ServiceControl(unit="docker.service", pidfile=pidfile, pidfile_shown="/run/docker.pid")
    sleeper = start_sleep()
    try:
        pidfile.write_text(f"{sleeper.pid}\n")
        with pytest.raises(StepFailed) as e:
            svc.reload()
        assert str(e.value) == (
            f"/run/docker.pid: pid {sleeper.pid} is 'sleep', not dockerd; not signalling it"
        )
        time.sleep(0.2)
        assert sleeper.poll() is None  # a SIGHUP would have killed it
    finally:
        sleeper.kill()
        sleeper.wait()
    # its pid is now free: a dead pid is not signalled either
    with pytest.raises(StepFailed, match=rf"^/run/docker.pid: pid {sleeper.pid} is not running"):
        svc.reload()
    for junk in ("-1", "0", "", "12a", "99999999999999999999"):
        pidfile.write_text(junk)
        with pytest.raises(StepFailed, match=r"^/run/docker.pid: .* is not a process id"):
            svc.reload()
    pidfile.unlink()
    with pytest.raises(StepFailed, match=r"^/run/docker.pid: absent"):
        svc.reload()


# --- against a real dockerd: true messages, exact restores, --no-default, rollback ------


def with_docker(d: Dockerd, **docker: object) -> DockerEngine:
    """An engine whose docker controls are overridden (e.g. a reload command that fails)."""
    runtime = {k: docker.pop(k) for k in list(docker) if k not in DockerConfig.__annotations__}
    cfg = config_for(d, **runtime)
    dc = dataclasses.replace(cfg.runtime.docker, **docker)  # type: ignore[arg-type]
    cfg = dataclasses.replace(cfg, runtime=dataclasses.replace(cfg.runtime, docker=dc))
    return DockerEngine(cfg, HostRoot(d.root))


def test_no_default_after_set_as_default_demotes_it_by_a_reload(dockerd: Dockerd) -> None:
    start(dockerd)
    pid = dockerd.pid
    eng = engine(dockerd)
    assert eng.apply(eng.plan(eng.read())).verified
    assert dockerd.info()["DefaultRuntime"] == "nvidia"
    no_default = engine(dockerd, set_as_default=False)
    plan = no_default.plan(no_default.read())
    assert plan.activation == Activation.RELOAD  # a changed value, not a removed key
    assert '-  "default-runtime": "nvidia"' in plan.diff()
    assert '+  "default-runtime": "runc"' in plan.diff()
    result = no_default.apply(plan)
    assert (result.activation, result.verified) == (Activation.RELOAD, True)
    info = dockerd.info()
    assert info["DefaultRuntime"] == "runc"
    assert "nvidia" in info["Runtimes"]  # still there for --runtime nvidia / a RuntimeClass
    assert dockerd.pid == pid and dockerd.reloads() == 2
    assert not no_default.plan(no_default.read()).changed  # and it stays so


def test_a_failed_reload_command_never_reports_a_restart(dockerd: Dockerd) -> None:
    start(dockerd)
    before = dockerd.config.read_bytes()
    pid = dockerd.pid
    eng = with_docker(dockerd, pidfile=None, reload_command=("/bin/false",), restart_mode="reload")
    with pytest.raises(StepFailed) as e:
        eng.apply(eng.plan(eng.read()))
    assert str(e.value) == (
        "reloading docker failed (/bin/false failed (exit 1)); the old file is restored. "
        "restart_mode reload allows no restart"
    )
    assert dockerd.config.read_bytes() == before
    assert dockerd.pid == pid
    assert dockerd.info()["DefaultRuntime"] == "runc"


def test_failed_reload_and_restart_commands_are_reported_as_failed(dockerd: Dockerd) -> None:
    start(dockerd)
    before = dockerd.config.read_bytes()
    pid = dockerd.pid
    eng = with_docker(
        dockerd,
        pidfile=None,
        reload_command=("/bin/false",),
        restart_command=("/bin/sh", "-c", "echo unit not found >&2; exit 5"),
        verify_timeout_s=2.0,
    )
    with pytest.raises(StepFailed) as e:
        eng.apply(eng.plan(eng.read()))
    assert str(e.value) == (
        "restarting docker failed (/bin/sh -c echo unit not found >&2; exit 5 failed (exit 5): "
        "unit not found); restored the previous /etc/docker/daemon.json; restarting docker "
        "with it failed too (/bin/sh -c echo unit not found >&2; exit 5 failed (exit 5): "
        "unit not found)"
    )
    assert dockerd.config.read_bytes() == before
    assert dockerd.pid == pid


def test_pidfile_naming_another_process_stops_the_reload(dockerd: Dockerd) -> None:
    start(dockerd)
    before = dockerd.config.read_bytes()
    real_pid = dockerd.pid
    sleeper = start_sleep()
    try:
        dockerd.pidfile.write_text(f"{sleeper.pid}\n")  # stale: the pid is someone else's
        eng = engine(dockerd, restart_mode="reload")
        with pytest.raises(StepFailed) as e:
            eng.apply(eng.plan(eng.read()))
        assert str(e.value) == (
            f"reloading docker failed (/run/docker.pid: pid {sleeper.pid} is 'sleep', not "
            "dockerd; not signalling it); the old file is restored. restart_mode reload "
            "allows no restart"
        )
        assert sleeper.poll() is None
    finally:
        sleeper.kill()
        sleeper.wait()
        dockerd.pidfile.write_text(f"{real_pid}\n")
    assert dockerd.config.read_bytes() == before
    assert dockerd.reloads() == 0


def test_restore_after_a_reload_that_did_not_take_is_exact(dockerd: Dockerd) -> None:
    # daemon.json is a symlink to a 0640 CRLF file: the restore puts back those bytes,
    # that mode, through the link.
    target = dockerd.root / "etc/docker/real/daemon.json"
    target.parent.mkdir(parents=True)
    original = dockerd.config.read_bytes().replace(b"\n", b"\r\n")
    target.write_bytes(original)
    target.chmod(0o640)
    dockerd.config.unlink()
    dockerd.config.symlink_to("real/daemon.json")
    start(dockerd)
    dockerd.import_busybox()
    dockerd.docker("run", "-d", "--network", "none", "bb:local", "sleep", "600")
    eng = silent_reload(dockerd)
    with pytest.raises(StepFailed, match="did not take the new") as e:
        eng.apply(eng.plan(eng.read()))
    assert "restarted" not in str(e.value)
    assert dockerd.config.is_symlink() and os.readlink(dockerd.config) == "real/daemon.json"
    assert target.read_bytes() == original
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert not list(target.parent.glob(".*nodeagent-tmp*"))


def test_rollback_of_a_malformed_file_restarts_only_when_allowed(dockerd: Dockerd) -> None:
    start(dockerd)
    before = dockerd.config.read_bytes()
    eng = engine(dockerd)
    assert eng.apply(eng.plan(eng.read())).verified
    dockerd.config.write_text('{"runtimes": null')  # a bad edit: what docker runs is unknown
    dockerd.import_busybox()
    # (stopped within 1 s when dockerd restarts, not docker's default 10 s)
    box = dockerd.docker(
        "run", "-d", "--stop-timeout", "1", "--network", "none", "bb:local", "sleep", "600"
    )
    pid = dockerd.pid
    # a container runs and live-restore is off: written, not restarted, and said so
    result = engine(dockerd).rollback()
    assert dockerd.config.read_bytes() == before
    assert result.activation == "none"
    assert result.message.endswith(
        "; docker keeps whatever it last loaded (the replaced file was malformed) until it "
        "restarts (a reload does not unset removed keys; containers are running and "
        "live-restore is off): run with --allow-restart to restart now"
    )
    assert dockerd.pid == pid
    assert box in dockerd.docker("ps", "-q", "--no-trunc").split()
    # allowed to restart: the same rollback restarts docker onto the restored file
    dockerd.config.write_text('{"runtimes": null')
    result = engine(dockerd, allow_restart=True).rollback()
    assert (result.activation, dockerd.config.read_bytes()) == (Activation.RESTART, before)
    assert result.message.endswith("; restarted docker")
    assert dockerd.pid != pid
    assert dockerd.info()["DefaultRuntime"] == "runc"
