"""The systemd units in systemd/: what systemd itself says of them, and the directives the
agent depends on (docs/install.md explains each).

``systemd-analyze verify`` needs every command a unit runs to exist, and the units it orders
against (``sysinit.target`` ...) to be loadable, so it runs against a temporary root holding
this machine's unit directory, the commands the units name (``/usr/bin/nodeagent`` is this
checkout's entry point) and the units under test. ``systemd-analyze security --offline``
scores the daemon's sandbox; every item it still marks exposed must be explained in
docs/install.md.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from nodeagent.cli.main import build_parser
from nodeagent.config import Config
from nodeagent.daemon.loop import STOP_GRACE_S
from nodeagent.errors import EXIT_BAD_INPUT, EXIT_NO_GPU
from nodeagent.kube.kubeletargs import DEBIAN_PATH, RHEL_PATH
from nodeagent.walk.agent import PHASES
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
UNIT_DIR = REPO / "systemd"
DAEMON = UNIT_DIR / "nodeagent.service"
BOOTSTRAP = UNIT_DIR / "nodeagent-bootstrap.service"
INSTALL_DOC = REPO / "docs" / "install.md"

# `systemd-analyze security` scores 0 (locked down) to 10 (exposed).
MAX_EXPOSURE = {DAEMON: 3.0, BOOTSTRAP: 3.0}

# Default paths in Config that the agent only reads or connects to; every other default
# path is one it writes, which the units must make writable. A new path key is therefore a
# write path until it is listed here.
READ_ONLY_KEYS = {
    "kube.kubeconfig": "the kubelet's credential: read",
    "runtime.containerd.address": "containerd's socket: connected to",
    "daemon.pod_resources_socket": "the kubelet's pod-resources socket: connected to",
}

Unit = dict[str, dict[str, list[str]]]


# --- a unit file, as systemd reads it -----------------------------------------------------


def parse_unit(text: str) -> Unit:
    """Sections -> key -> every assignment in order (an empty one resets, as in systemd)."""
    unit: Unit = {}
    section: dict[str, list[str]] = {}
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = unit.setdefault(line[1:-1], {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        value = value.strip()
        if value:
            section.setdefault(key.strip(), []).append(value)
        else:
            section[key.strip()] = []
    return unit


def load(path: Path) -> Unit:
    return parse_unit(path.read_text(encoding="utf-8"))


def words(unit: Unit, section: str, key: str) -> list[str]:
    """A list-valued setting (After=, ReadWritePaths= ...): every word of every line."""
    return [w for value in unit.get(section, {}).get(key, []) for w in shlex.split(value)]


def single(unit: Unit, section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert values, f"[{section}] {key}= is not set"
    return values[-1]


def exec_argv(value: str) -> list[str]:
    """An Exec*= line's argv, without systemd's prefixes (-, +, !, @, :)."""
    argv = shlex.split(value)
    argv[0] = argv[0].lstrip("-+!@:")
    return argv


def writable_dirs(unit: Unit) -> list[PurePosixPath]:
    """What ProtectSystem=strict leaves writable for this unit (besides /dev, /proc, /sys,
    and PrivateTmp's /tmp): ReadWritePaths= and the directories systemd creates for it."""
    s = "Service"
    dirs = [w.lstrip("-+") for w in words(unit, s, "ReadWritePaths")]
    for key, base in (
        ("RuntimeDirectory", "/run"),
        ("StateDirectory", "/var/lib"),
        ("CacheDirectory", "/var/cache"),
        ("LogsDirectory", "/var/log"),
        ("ConfigurationDirectory", "/etc"),
    ):
        dirs += [f"{base}/{d}" for d in words(unit, s, key)]
    return [PurePosixPath(d) for d in dirs]


def is_writable(path: str, dirs: list[PurePosixPath]) -> bool:
    p = PurePosixPath(path)
    return any(p == d or d in p.parents for d in dirs)


def default_write_paths() -> dict[str, str]:
    """Every default host path in Config the agent writes (dotted key -> path).

    The agent writes each file atomically (a temp file renamed over it) and creates
    directories it needs, so what must be writable is the directory holding the path.
    """
    found: dict[str, str] = {}

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            key = f"{prefix}{f.name}"
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif isinstance(value, str) and value.startswith("/") and key not in READ_ONLY_KEYS:
                found[key] = value

    walk(Config(), "")
    # kube.kubelet_args_file defaults to None: the path is picked from /etc/os-release.
    assert Config().kube.kubelet_args_file is None
    found["kube.kubelet_args_file (Debian)"] = DEBIAN_PATH
    found["kube.kubelet_args_file (RHEL)"] = RHEL_PATH
    return found


# --- systemd-analyze ----------------------------------------------------------------------


def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        skip_or_fail("systemd-analyze", "systemd-analyze not installed (apt-get install systemd)")
        raise AssertionError("unreachable")
    return path


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, "SYSTEMD_COLORS": "0"}
    )


def _host_unit_dir() -> Path:
    for d in (Path("/usr/lib/systemd/system"), Path("/lib/systemd/system")):
        if (d / "sysinit.target").exists():
            return d
    skip_or_fail("systemd-analyze", "no systemd unit directory with sysinit.target here")
    raise AssertionError("unreachable")


def _nodeagent_entry_point() -> Path:
    beside = Path(sys.executable).with_name("nodeagent")
    found = beside if beside.exists() else shutil.which("nodeagent")
    assert found, "the nodeagent entry point is not installed (pip install -e .)"
    return Path(found)


@pytest.fixture(scope="module")
def verify_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root for `systemd-analyze verify --root`: this machine's units, the commands our
    units run, and an empty /etc/systemd/system for the units under test."""
    systemd_analyze()
    root = tmp_path_factory.mktemp("unitroot")
    shutil.copytree(_host_unit_dir(), root / "usr/lib/systemd/system", symlinks=True)
    for top in ("lib", "bin", "sbin"):  # merged /usr, as on current Debian and RHEL
        (root / top).symlink_to(f"usr/{top}")
    (root / "usr/bin").mkdir(parents=True)
    (root / "usr/sbin").mkdir(parents=True)
    (root / "etc/systemd/system").mkdir(parents=True)
    for unit in (DAEMON, BOOTSTRAP):
        u = load(unit)
        for key, values in u["Service"].items():
            if not key.startswith("Exec"):
                continue
            for value in values:
                target = PurePosixPath(exec_argv(value)[0])
                dest = root / target.relative_to("/")
                if dest.exists():
                    continue
                if target.name == "nodeagent":
                    source: Any = _nodeagent_entry_point()
                else:
                    source = shutil.which(target.name)
                    assert source, f"{target.name} (run by {unit.name}) is not on this machine"
                shutil.copy2(source, dest)
    return root


def verify(root: Path, name: str, text: str) -> subprocess.CompletedProcess[str]:
    (root / "etc/systemd/system" / name).write_text(text, encoding="utf-8")
    # --man=no: Documentation=man:nodeagent(1) is the packages' man page, not on this machine.
    return run(
        systemd_analyze(),
        "verify",
        "--man=no",
        f"--root={root}",
        f"/etc/systemd/system/{name}",
    )


def security(unit: Path) -> tuple[subprocess.CompletedProcess[str], float, list[str]]:
    """``systemd-analyze security --offline`` of ``unit`` with the threshold of
    MAX_EXPOSURE: the run, the overall exposure, the names of the items marked exposed."""
    threshold = round(MAX_EXPOSURE[unit] * 10)
    proc = run(
        systemd_analyze(), "security", "--offline=true", f"--threshold={threshold}", str(unit)
    )
    m = re.search(rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", proc.stdout)
    assert m, proc.stdout + proc.stderr
    exposed = [
        re.split(r"\s{2,}", line[1:].strip())[0]
        for line in proc.stdout.splitlines()
        if line.startswith("✗")
    ]
    return proc, float(m.group(1)), exposed


# --- systemd's own checks -----------------------------------------------------------------


@pytest.mark.parametrize("unit", [DAEMON, BOOTSTRAP], ids=lambda p: p.name)
def test_systemd_analyze_verify_is_clean(verify_root: Path, unit: Path) -> None:
    proc = verify(verify_root, unit.name, unit.read_text(encoding="utf-8"))
    # verify exits 0 on an unknown key or a bad value (it only warns): any output is a finding.
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout + proc.stderr).strip() == ""


def test_verify_would_catch_a_broken_unit(verify_root: Path) -> None:
    """The check above can fail: a misspelt key, a bad value, a missing binary."""
    text = DAEMON.read_text(encoding="utf-8")
    broken = (
        text.replace("WatchdogSec=60", "WatchdogSek=60")
        .replace("Restart=on-failure", "Restart=sometimes")
        .replace("ExecStart=/usr/bin/nodeagent run", "ExecStart=/usr/bin/nodeagentx run")
    )
    assert broken != text
    proc = verify(verify_root, "broken.service", broken)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "WatchdogSek" in out and "sometimes" in out and "/usr/bin/nodeagentx" in out


@pytest.mark.parametrize("unit", [DAEMON, BOOTSTRAP], ids=lambda p: p.name)
def test_security_exposure(unit: Path) -> None:
    proc, level, exposed = security(unit)
    assert proc.returncode == 0, f"exposure {level} above {MAX_EXPOSURE[unit]}:\n{proc.stdout}"
    assert level <= MAX_EXPOSURE[unit]
    assert exposed, "no exposed item parsed: has the output format changed?"


@pytest.mark.parametrize("unit", [DAEMON, BOOTSTRAP], ids=lambda p: p.name)
def test_every_remaining_exposure_is_explained_in_install_md(unit: Path) -> None:
    _, _, exposed = security(unit)
    doc = INSTALL_DOC.read_text(encoding="utf-8").replace("\\|", "|")  # table cells
    missing = [name for name in exposed if f"`{name}`" not in doc]
    assert not missing, f"docs/install.md does not explain {missing} ({unit.name})"


# --- the daemon ---------------------------------------------------------------------------


def test_daemon_is_a_watched_notify_service() -> None:
    u = load(DAEMON)
    s = "Service"
    assert single(u, s, "Type") == "notify"
    assert single(u, s, "NotifyAccess") == "main"
    argv = exec_argv(single(u, s, "ExecStart"))
    assert argv[0] == "/usr/bin/nodeagent"
    assert build_parser().parse_args(argv[1:]).command == "run"
    assert single(u, s, "ExecReload") == "/bin/kill -HUP $MAINPID"
    assert single(u, s, "Restart") == "on-failure"
    assert single(u, s, "RestartSec") == "5"
    # Exit 2 is a bad config file: restarting cannot fix it.
    assert words(u, s, "RestartPreventExitStatus") == [str(EXIT_BAD_INPUT)]
    assert single(u, s, "WatchdogSec") == "60"
    # The daemon exits within STOP_GRACE_S of SIGTERM; systemd must wait longer than that.
    assert float(single(u, s, "TimeoutStopSec")) > STOP_GRACE_S
    assert words(u, "Install", "WantedBy") == ["multi-user.target"]


def test_daemon_starts_after_what_it_reports_on() -> None:
    u = load(DAEMON)
    after = set(words(u, "Unit", "After"))
    for unit in ("kubelet.service", "docker.service", "containerd.service", BOOTSTRAP.name):
        assert unit in after
    assert words(u, "Unit", "Wants") == [BOOTSTRAP.name]


def test_daemon_sandbox_keeps_what_it_needs() -> None:
    u = load(DAEMON)
    s = "Service"
    assert single(u, s, "ProtectSystem") == "strict"
    assert single(u, s, "NoNewPrivileges") == "yes"
    assert single(u, s, "MemoryDenyWriteExecute") == "yes"
    assert single(u, s, "UMask") == "0022"
    # docker/containerd/systemd/sd_notify sockets, the API server, the metrics listener.
    assert set(words(u, s, "RestrictAddressFamilies")) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # NVML's devices, nothing else beyond the pseudo devices.
    assert single(u, s, "DevicePolicy") == "closed"
    allowed = [shlex.split(v)[0] for v in u[s]["DeviceAllow"]]
    assert "char-nvidia-frontend" in allowed and "char-nvidia-caps" in allowed
    caps = set(words(u, s, "CapabilityBoundingSet"))
    assert {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FOWNER"} <= caps
    assert not caps & {"CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SYS_MODULE", "CAP_MKNOD"}
    # A refused system call must fail, not kill the daemon (SIGSYS).
    assert single(u, s, "SystemCallErrorNumber") == "EPERM"


# --- the bootstrap oneshot ----------------------------------------------------------------


def test_bootstrap_runs_once_before_the_kubelet() -> None:
    u = load(BOOTSTRAP)
    s = "Service"
    assert single(u, s, "Type") == "oneshot"
    assert single(u, s, "RemainAfterExit") == "yes"
    argv = exec_argv(single(u, s, "ExecStart"))
    assert argv[0] == "/usr/bin/nodeagent"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.phase, args.dry_run) == ("apply", "bootstrap", False)
    assert words(u, "Unit", "Before") == ["kubelet.service"]
    after = set(words(u, "Unit", "After"))
    assert {"docker.service", "containerd.service", "cloud-init.service"} <= after
    # Bootstrap needs no network, and must not order after anything that waits for the
    # boot to finish: cloud-init's runcmd (cloud-final.service) starts it and waits for it.
    assert not after & {
        "network-online.target",
        "cloud-final.service",
        "cloud-config.service",
        "multi-user.target",
    }
    # Ordering only: pulling in a disabled runtime would change what engine "auto" picks.
    assert not set(words(u, "Unit", "Wants")) & {"docker.service", "containerd.service"}
    assert words(u, s, "SuccessExitStatus") == [str(EXIT_NO_GPU)]
    assert set(words(u, "Install", "WantedBy")) == {"multi-user.target", "kubelet.service"}


def test_bootstrap_has_no_network() -> None:
    """The bootstrap phase never talks to the API server: only local sockets."""
    u = load(BOOTSTRAP)
    s = "Service"
    assert single(u, s, "PrivateNetwork") == "yes"
    assert words(u, s, "RestrictAddressFamilies") == ["AF_UNIX"]
    assert "node" not in PHASES["bootstrap"]
    # ... but keeps what the first NVML call of a boot may need to create /dev/nvidia*.
    caps = set(words(u, s, "CapabilityBoundingSet"))
    assert {"CAP_MKNOD", "CAP_SYS_MODULE"} <= caps
    assert "DevicePolicy" not in u[s] and single(u, s, "ProtectKernelModules") == "no"


# --- what the sandbox leaves writable -----------------------------------------------------


def test_default_write_paths_are_found() -> None:
    paths = default_write_paths()
    for key in (
        "lock_file",
        "backup_dir",
        "runtime.docker.config_file",
        "runtime.containerd.config_file",
        "runtime.containerd.drop_in",
        "daemon.state_file",
    ):
        assert key in paths


@pytest.mark.parametrize("unit", [DAEMON, BOOTSTRAP], ids=lambda p: p.name)
def test_every_default_write_path_is_writable(unit: Path) -> None:
    u = load(unit)
    assert single(u, "Service", "ProtectSystem") == "strict"
    dirs = writable_dirs(u)
    not_writable = {
        key: path
        for key, path in default_write_paths().items()
        if not is_writable(str(PurePosixPath(path).parent), dirs)
    }
    assert not not_writable, f"{unit.name}: ReadWritePaths= misses {not_writable}"


# Writable beyond the config's default paths, and why (docs/install.md).
EXTRA_WRITABLE = {
    "/var/lib/node_exporter/textfile_collector": "daemon.metrics_textfile, usual place",
    "/var/lib/prometheus/node-exporter": "daemon.metrics_textfile, Debian's node-exporter",
    "/var/cache/nodeagent": "the packages' launcher keeps Python bytecode there",
    "/etc/cdi": "a stale CDI spec found there is regenerated in place",
}


@pytest.mark.parametrize("unit", [DAEMON, BOOTSTRAP], ids=lambda p: p.name)
def test_writable_dirs_are_no_wider_than_needed(unit: Path) -> None:
    """Nothing writable beyond the agent's own paths and the few listed above."""
    needed = {str(PurePosixPath(p).parent) for p in default_write_paths().values()}
    for d in writable_dirs(load(unit)):
        assert str(d) in EXTRA_WRITABLE or any(
            n == str(d) or PurePosixPath(n).is_relative_to(d) for n in needed
        ), f"{unit.name}: {d} is writable but the agent writes nothing there"
