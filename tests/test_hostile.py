"""The hostile host: every strange thing a real node can hold, through the real CLI.

Each case is data: a setup on a scratch ``--root`` (bytes, modes, owners, symlinks, FIFOs,
devices, sockets, directories, ``chattr +i``, a read-only bind mount, a full tmpfs), the
command (``python -m nodeagent --root DIR ...`` as a subprocess, the simulated GPU), and
what must hold afterwards. Every case also asserts, whatever it is about:

* the exit code, and no ``Traceback`` anywhere in the output;
* at most one line on stderr that is not a JSON log line (a failure is one line);
* where given, one output line that carries every expected fragment (the path, the key);
* files that may not change are byte-identical, with the same mode, owner and inode;
* no ``*.nodeagent-tmp-*`` file is left anywhere under the root;
* the command ends within its timeout (a FIFO never makes the agent wait).

Issue 10 lists the classes; docs/reliability.md maps each guarantee to the cases here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
import tomlkit
import yaml

from tests.hostfiles import CONTAINERD_TOML, CRI, CT, DI, DJ, KA, RUNC_V2, TEMP_MARK
from tests.realparts import skip_or_fail

REPO = Path(__file__).resolve().parents[1]
CFG = "/etc/nodeagent/config.yaml"
KC = "/etc/kubernetes/kubelet.conf"
LOCK = "/run/nodeagent/nodeagent.lock"
BACKUPS = "/var/lib/nodeagent/backups"
TAINT = "--register-with-taints=readiness.k8s.io/nvidia-gpu-not-ready:NoSchedule"

# The agent's config on every scratch root: the engine is set (no daemon runs, so every
# case is write-only and fast) and every wait is short.
BASE_CONFIG: dict[str, Any] = {
    "node_name": "gpu-node-1",
    "runtime": {"engine": "docker", "verify_timeout_s": 1},
    "kube": {"api_deadline_s": 2, "wait_for_node_s": 1},
    "daemon": {"metrics_listen": ""},
}
CONTAINERD = {"runtime": {"engine": "containerd", "verify_timeout_s": 1}}

# containerd.io's stock /etc/containerd/config.toml: nothing but comments.
STOCK_TOML = """#   Copyright 2018-2022 Docker Inc.

#   Licensed under the Apache License, Version 2.0 (the "License");
#   you may not use this file except in compliance with the License.

#disabled_plugins = ["cri"]

#root = "/var/lib/containerd"
#state = "/run/containerd"
#subreaper = true
#oom_score = 0

#[grpc]
#  address = "/run/containerd/containerd.sock"
#  uid = 0
#  gid = 0
"""
DAEMON_JSON = '{\n    "log-driver": "json-file",\n    "live-restore": true\n}\n'
CONFIGURED_JSON = (
    '{\n    "runtimes": {\n        "nvidia": {\n            "path": "nvidia-container-runtime",'
    '\n            "runtimeArgs": []\n        }\n    },\n    "default-runtime": "nvidia"\n}\n'
)


# --- the scratch host ---------------------------------------------------------------------


@dataclasses.dataclass
class Run:
    """One finished command."""

    argv: list[str]
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return (self.out + self.err).splitlines()

    def show(self) -> str:
        head = f"$ {' '.join(self.argv)}\nexit {self.code}"
        return f"{head}\n--- stdout\n{self.out}--- stderr\n{self.err}"


class Host:
    """A scratch root: helpers to build hostile files in it, and to run the agent on it."""

    def __init__(self, root: Path, env: dict[str, str], cwd: Path, python: list[str]) -> None:
        self.root = root
        self.env = env
        self.cwd = cwd
        self.python = python
        self.cleanups: list[Callable[[], object]] = []
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def p(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def _parent(self, host_path: str) -> Path:
        path = self.p(host_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def file(
        self, host_path: str, data: str | bytes, mode: int = 0o644, uid: int = 0, gid: int = 0
    ) -> Path:
        path = self._parent(host_path)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        os.chown(path, uid, gid)
        path.chmod(mode)
        return path

    def dir(self, host_path: str) -> Path:
        path = self.p(host_path)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def link(self, host_path: str, target: str) -> Path:
        path = self._parent(host_path)
        path.symlink_to(target)
        return path

    def fifo(self, host_path: str) -> Path:
        path = self._parent(host_path)
        os.mkfifo(path)
        return path

    def device(self, host_path: str) -> Path:
        path = self._parent(host_path)
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 3))  # what /dev/null is
        return path

    def socket(self, host_path: str) -> Path:
        path = self._parent(host_path)
        os.mknod(path, stat.S_IFSOCK | 0o600)
        return path

    def read(self, host_path: str) -> bytes:
        return self.p(host_path).read_bytes()

    def text(self, host_path: str) -> str:
        return self.read(host_path).decode()

    def exists(self, host_path: str) -> bool:
        return os.path.lexists(self.p(host_path))

    def immutable(self, host_path: str) -> None:
        path = self.p(host_path)
        subprocess.run(["chattr", "+i", str(path)], check=True)
        self.cleanups.append(lambda: subprocess.run(["chattr", "-i", str(path)], check=False))

    def mount_ro(self, host_dir: str) -> None:
        path = self.dir(host_dir)
        subprocess.run(["mount", "--bind", str(path), str(path)], check=True)
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
        subprocess.run(["mount", "-o", "remount,bind,ro", str(path)], check=True)

    def tmpfs(self, host_dir: str, size: str = "256k") -> Path:
        path = self.dir(host_dir)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True
        )
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", str(path)], check=False))
        return path

    def fill(self, host_dir: str) -> None:
        """Fill the filesystem holding ``host_dir`` until it refuses another byte."""
        fd = os.open(self.p(host_dir) / ".filler", os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (65536, 4096, 1):  # to the last byte
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * size)
            with pytest.raises(OSError) as full:
                os.write(fd, b"\0")
            assert full.value.errno == errno.ENOSPC
        finally:
            os.close(fd)

    def sleeper(self, name: str) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(["sleep", "120"])
        self.procs[name] = proc
        self.cleanups.append(proc.wait)  # cleanups run last-first: kill, then wait
        self.cleanups.append(proc.kill)
        return proc

    def argv(self, *args: str, module: str = "nodeagent") -> list[str]:
        return [*self.python, "-m", module, *args]

    def run(
        self,
        *args: str,
        timeout: float = 20,
        env: Optional[Mapping[str, str]] = None,
        module: str = "nodeagent",
    ) -> Run:
        argv = self.argv(*args, module=module)
        try:
            r = subprocess.run(
                argv,
                capture_output=True,
                text=True,
                cwd=self.cwd,
                env={**self.env, **(env or {})},
                timeout=timeout,
            )
        except subprocess.TimeoutExpired as e:
            pytest.fail(f"hung: {' '.join(argv)} did not end in {timeout} s: {e.stderr!r}")
        return Run(argv, r.returncode, r.stdout, r.stderr)

    def agent(self, *args: str, **kw: Any) -> Run:
        """``nodeagent --root ROOT ARGS`` (the config is the root's config.yaml)."""
        return self.run("--root", str(self.root), *args, **kw)

    def close(self) -> None:
        for undo in reversed(self.cleanups):
            with contextlib.suppress(Exception):
                undo()


def snapshot(host: Host, host_path: str) -> dict[str, tuple[Any, ...]]:
    """Every entry at or under ``host_path``: its kind, bytes, mode, owner, inode, link."""
    top = host.p(host_path)
    out: dict[str, tuple[Any, ...]] = {}
    paths = [top] if not top.is_dir() or top.is_symlink() else [top, *sorted(top.rglob("*"))]
    for p in paths:
        try:
            st = p.lstat()
        except FileNotFoundError:
            out[str(p)] = ("absent",)
            continue
        if stat.S_ISLNK(st.st_mode):
            out[str(p)] = ("link", os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[str(p)] = ("file", p.read_bytes(), st.st_mode, st.st_uid, st.st_gid, st.st_ino)
        else:
            out[str(p)] = ("other", stat.S_IFMT(st.st_mode), st.st_mode, st.st_ino)
    return out


def junk(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(f"*{TEMP_MARK}*")]


def merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), dict) else v
    return out


def fmt(value: Any, **names: str) -> Any:
    """``value`` with ``{root}`` etc. filled in every string."""
    if isinstance(value, str):
        for k, v in names.items():
            value = value.replace("{" + k + "}", v)
        return value
    if isinstance(value, Mapping):
        return {k: fmt(v, **names) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [fmt(v, **names) for v in value]
    return value


# --- what a case is --------------------------------------------------------------------------


Setup = Callable[[Host], object]
Check = Callable[[Host, Run], object]


def nothing(h: Host) -> None:
    pass


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    argv: tuple[str, ...]
    setup: Setup = nothing
    config: Optional[Mapping[str, Any]] = dataclasses.field(default_factory=dict)  # None: none
    code: int = 0
    says: tuple[str, ...] = ()  # fragments one output line carries together
    same: tuple[str, ...] = ()  # host paths (files or trees) that must not change at all
    check: Optional[Check] = None
    # run first, in order: agent commands (each must exit 0) or the operator's own hand
    before: tuple[tuple[str, ...] | Setup, ...] = ()
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    globals: tuple[str, ...] = ("--root", "{root}")  # the options before the command
    wrap: tuple[str, ...] = ()  # tests/crashpoint.py options: inject an errno
    nobody: bool = False  # run as uid/gid 65534 (setpriv), the root world-readable
    run_for: float = 0.0  # `run`: how long it must stay up before SIGTERM
    timeout: float = 20.0


CASES: list[Case] = []


def inject(op: str, err: str) -> tuple[str, ...]:
    """tests/crashpoint.py options: daemon.json's first ``op`` fails with ``err``."""
    return ("--op", op, "--name", "daemon.json", "--nth", "1", "--action", "fail", "--errno", err)


def case(*args: Any, **kw: Any) -> None:
    CASES.append(Case(*args, **kw))


# --- setups and checks used by several cases -----------------------------------------------


def daemon_json(data: str | bytes, mode: int = 0o644, uid: int = 0) -> Setup:
    return lambda h: h.file(DJ, data, mode, uid)


def config_toml(data: str | bytes, mode: int = 0o644) -> Setup:
    return lambda h: h.file(CT, data, mode)


def kubelet_file(data: str | bytes) -> Setup:
    return lambda h: h.file(KA, data)


def raw_config(data: str | bytes) -> Setup:
    return lambda h: h.file(CFG, data)


def both(*setups: Setup) -> Setup:
    def run(h: Host) -> None:
        for s in setups:
            s(h)

    return run


def json_of(h: Host, host_path: str = DJ) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(h.read(host_path))
    return data


def toml_of(h: Host, host_path: str) -> dict[str, Any]:
    data: dict[str, Any] = tomlkit.parse(h.text(host_path)).unwrap()
    return data


def nvidia_in_daemon_json(h: Host, r: Run) -> None:
    data = json_of(h)
    assert data["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime", data
    assert data.get("default-runtime") == "nvidia", data


def taint_written(h: Host, r: Run) -> None:
    assert TAINT in h.text(KA), h.text(KA)


def dump(h: Host) -> dict[str, Any]:
    """``containerd config dump`` of the root's config.toml: containerd's own verdict."""
    if shutil.which("containerd") is None:
        skip_or_fail("containerd", "the containerd binary is not installed")
    p = subprocess.run(
        ["containerd", "--config", str(h.p(CT)), "config", "dump"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=h.root,
    )
    assert p.returncode == 0, f"containerd refuses the config: {p.stderr.strip()}"
    data: dict[str, Any] = tomlkit.parse(p.stdout).unwrap()
    return data


def cri_of(data: Mapping[str, Any]) -> dict[str, Any]:
    ctd: dict[str, Any] = data["plugins"][CRI]["containerd"]
    return ctd


def containerd_has_nvidia(default: bool = True) -> Check:
    def check(h: Host, r: Run) -> None:
        ctd = cri_of(dump(h))
        assert ctd["runtimes"]["nvidia"]["options"]["BinaryName"].endswith(
            "nvidia-container-runtime"
        ), ctd
        assert (ctd["default_runtime_name"] == "nvidia") is default, ctd

    return check


def then(*checks: Check) -> Check:
    def run(h: Host, r: Run) -> None:
        for c in checks:
            c(h, r)

    return run


def unchanged_on_second_run(*args: str) -> Check:
    """A second run of the command writes nothing: same bytes, same inode, says unchanged."""

    def check(h: Host, r: Run) -> None:
        files = ("/etc",)
        before = {f: snapshot(h, f) for f in files}
        again = h.agent(*args)
        assert again.code == 0, again.show()
        assert "unchanged" in again.out, again.show()
        assert {f: snapshot(h, f) for f in files} == before, "the second run wrote"

    return check


def mode_is(host_path: str, mode: int, uid: int = 0) -> Check:
    def check(h: Host, r: Run) -> None:
        st = h.p(host_path).stat()
        assert stat.S_IMODE(st.st_mode) == mode, oct(st.st_mode)
        assert st.st_uid == uid, st.st_uid

    return check


def absent(host_path: str) -> Check:
    def check(h: Host, r: Run) -> None:
        assert not h.exists(host_path), f"{host_path} exists"

    return check


def outside_untouched(h: Host, r: Run) -> None:
    outside = h.root.parent / "outside"
    assert sorted(p.name for p in outside.iterdir()) == ["daemon.json"], list(outside.iterdir())
    assert (outside / "daemon.json").read_text() == DAEMON_JSON


def make_outside(h: Host) -> None:
    outside = h.root.parent / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "daemon.json").write_text(DAEMON_JSON)


# Commands.
CONFIGURE = ("runtime", "configure")
DRY = ("runtime", "configure", "--dry-run")
BOOT = ("apply", "--phase", "bootstrap")
BOOT_DRY = ("apply", "--phase", "bootstrap", "--dry-run")
ROLLBACK = ("rollback",)
CHECK = ("check",)
DETECT = ("detect",)


# The case tables' loop variables.
cmd: tuple[str, ...]
body: str | bytes

# === daemon.json: shapes the agent touches ===================================================

for cmd in (CONFIGURE, BOOT, DRY, BOOT_DRY):
    boot = cmd[0] == "apply"
    case(
        f"runtimes-null-{'-'.join(cmd)}",
        cmd,
        daemon_json('{"runtimes": null}\n'),
        code=2,
        says=(DJ, "runtimes"),
        same=(DJ,),
        # the walk goes on: the node still registers with its startup taint
        check=taint_written if boot and "--dry-run" not in cmd else None,
    )
for name, text, key in (
    ("runtimes-list", '{"runtimes": []}', "runtimes"),
    ("runtimes-string", '{"runtimes": "nvidia"}', "runtimes"),
    ("runtimes-number", '{"runtimes": 5}', "runtimes"),
    ("runtime-entry-number", '{"runtimes": {"nvidia": 5}}', "nvidia"),
    ("runtime-entry-list", '{"runtimes": {"nvidia": ["x"]}}', "nvidia"),
    ("runtime-args-string", '{"runtimes": {"nvidia": {"runtimeArgs": "-x"}}}', "runtimeArgs"),
    ("default-runtime-number", '{"default-runtime": 5}', "default-runtime"),
    ("default-runtime-object", '{"default-runtime": {}}', "default-runtime"),
):
    case(f"shape-{name}", CONFIGURE, daemon_json(text + "\n"), code=2, says=(DJ, key), same=(DJ,))

# === daemon.json: bytes that are not a JSON object ==========================================

for name, body, says in (
    ("top-level-list", b"[]\n", "object"),
    ("top-level-null", b"null\n", "object"),
    ("top-level-string", b'"x"\n', "object"),
    ("truncated", b'{"log-driver": "json-file",\n', "invalid JSON"),
    ("comment", b'// docker\n{"debug": true}\n', "invalid JSON"),
    ("duplicate-key", b'{"debug": true, "debug": false}\n', "duplicate"),
    ("utf8-bom", b'\xef\xbb\xbf{"debug": true}\n', "byte-order mark"),
    ("utf16", '{"debug": true}\n'.encode("utf-16"), "UTF-16"),
    ("utf16-no-bom", '{"debug": true}\n'.encode("utf-16-le"), DJ),
    ("latin1", b'{"labels": ["caf\xe9"]}\n', "UTF-8"),
    ("nul-bytes", b'{"debug": true}\x00\x00\n', DJ),
    ("nested-900", b'{"x": ' + b"[" * 900 + b"]" * 900 + b"}\n", DJ),
    ("nested-100k", b'{"x": ' + b"[" * 100_000 + b"]" * 100_000 + b"}\n", DJ),
    ("nested-objects", b'{"x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}\n", DJ),
    ("oversize", b'{"debug": true' + b" " * (2 << 20) + b"}\n", "larger"),
    ("huge-number", b'{"max-concurrent-downloads": 1' + b"0" * 5000 + b"}\n", DJ),
    ("huge-number-nested", b'{"runtimes": {"nvidia": {"x": 1' + b"0" * 5000 + b"}}}\n", DJ),
    # found by bench/fuzz.py: a lone surrogate escape in a member the agent re-renders
    ("lone-surrogate", b'{"runtimes": {"crun": {"path": "/usr/bin/crun\\ud800"}}}\n', DJ),
):
    case(f"daemon-json-{name}", CONFIGURE, daemon_json(body), code=2, says=(DJ, says), same=(DJ,))
    if name in ("utf16", "nested-100k", "oversize"):
        case(
            f"daemon-json-{name}-bootstrap",
            BOOT,
            daemon_json(body),
            code=2,
            says=("runtime", DJ),
            same=(DJ,),
            check=taint_written,
        )

# === daemon.json: not a regular file ==========================================================

for name, make, says in (
    ("directory", lambda h: h.dir(DJ), "directory"),
    ("fifo", lambda h: h.fifo(DJ), "FIFO"),
    ("device", lambda h: h.device(DJ), "device"),
    ("socket", lambda h: h.socket(DJ), "not a regular file"),
    ("symlink-loop", lambda h: h.link(DJ, "daemon.json"), "symbolic links"),
):
    for cmd in (CONFIGURE, DRY, BOOT_DRY):
        case(f"daemon-json-{name}-{'-'.join(cmd)}", cmd, make, code=2, says=(DJ, says), same=(DJ,))
    case(f"daemon-json-{name}-check", CHECK, make, code=1, says=(DJ,), same=(DJ,))
case(
    "daemon-json-fifo-bootstrap-still-taints",
    BOOT,
    lambda h: h.fifo(DJ),
    code=2,
    says=("runtime", DJ, "FIFO"),
    same=(DJ,),
    check=taint_written,
)
case("daemon-json-directory-detect-unaffected", DETECT, lambda h: h.dir(DJ), code=0)

# === daemon.json: what the agent must keep ===================================================

case(
    "crlf-kept",
    CONFIGURE,
    daemon_json(DAEMON_JSON.replace("\n", "\r\n")),
    check=then(
        nvidia_in_daemon_json,
        lambda h, r: assert_crlf(h.read(DJ)),
        unchanged_on_second_run(*CONFIGURE),
    ),
)


def assert_crlf(data: bytes) -> None:
    assert data.count(b"\n") == data.count(b"\r\n") > 0, data


case(
    "no-final-newline-kept",
    CONFIGURE,
    daemon_json(DAEMON_JSON.rstrip("\n")),
    check=then(nvidia_in_daemon_json, lambda h, r: assert_no_final_newline(h.read(DJ))),
)


def assert_no_final_newline(data: bytes) -> None:
    assert not data.endswith(b"\n"), data


case(
    "tabs-kept",
    CONFIGURE,
    daemon_json('{\n\t"debug": true\n}\n'),
    check=then(nvidia_in_daemon_json, lambda h, r: assert_tabs(h.text(DJ))),
)


def assert_tabs(text: str) -> None:
    assert '\n\t"debug": true' in text and "\n    " not in text, text


case(
    "mode-0600-owner-kept",
    CONFIGURE,
    daemon_json(DAEMON_JSON, mode=0o600, uid=1234),
    check=then(nvidia_in_daemon_json, mode_is(DJ, 0o600, uid=1234)),
)
case(
    "mode-0640-kept",
    CONFIGURE,
    daemon_json(DAEMON_JSON, mode=0o640),
    check=mode_is(DJ, 0o640),
)
case("empty-file", CONFIGURE, daemon_json(b""), check=nvidia_in_daemon_json)
case("whitespace-only", CONFIGURE, daemon_json(b"  \n\n"), check=nvidia_in_daemon_json)
case(
    "absent-created-0644",
    CONFIGURE,
    check=then(nvidia_in_daemon_json, mode_is(DJ, 0o644)),
)
case(
    "already-configured-no-write",
    CONFIGURE,
    daemon_json(CONFIGURED_JSON),
    says=("unchanged",),
    same=("/etc", BACKUPS),
)
case(
    "idempotent-apply",
    BOOT,
    daemon_json(DAEMON_JSON),
    check=then(nvidia_in_daemon_json, taint_written, unchanged_on_second_run(*BOOT)),
)


def relative_link(h: Host) -> None:
    h.file("/etc/docker/real.json", DAEMON_JSON, mode=0o600)
    h.link(DJ, "real.json")


case(
    "symlink-relative-target-updated",
    CONFIGURE,
    relative_link,
    check=then(
        lambda h, r: assert_link(h, DJ, "real.json"),
        lambda h, r: assert_nvidia(json.loads(h.read("/etc/docker/real.json"))),
        lambda h, r: mode_is("/etc/docker/real.json", 0o600)(h, r),
    ),
)


def assert_link(h: Host, host_path: str, target: str) -> None:
    assert h.p(host_path).is_symlink(), f"{host_path} is no longer a symlink"
    assert os.readlink(h.p(host_path)) == target


def assert_nvidia(data: Mapping[str, Any]) -> None:
    assert data["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime", data


def abs_link_setup(h: Host) -> None:
    h.file("/srv/docker/daemon.json", DAEMON_JSON)
    h.link(DJ, "/srv/docker/daemon.json")


case(
    "symlink-absolute-followed-inside-root",
    CONFIGURE,
    abs_link_setup,
    check=then(
        lambda h, r: assert_link(h, DJ, "/srv/docker/daemon.json"),
        lambda h, r: assert_nvidia(json.loads(h.read("/srv/docker/daemon.json"))),
    ),
)
case(
    "symlink-dangling-target-created",
    CONFIGURE,
    lambda h: h.link(DJ, "/srv/new/daemon.json"),
    check=then(
        lambda h, r: assert_link(h, DJ, "/srv/new/daemon.json"),
        lambda h, r: assert_nvidia(json.loads(h.read("/srv/new/daemon.json"))),
    ),
)


def escaping_link(h: Host) -> None:
    make_outside(h)
    h.file("/outside/daemon.json", '{"debug": true}\n')  # what the root itself holds there
    # from root/etc/docker, three levels up is the root's parent to the OS, the root to the host
    h.link(DJ, "../../../outside/daemon.json")


case(
    "symlink-dotdot-stays-in-root",
    CONFIGURE,
    escaping_link,
    check=then(
        lambda h, r: outside_untouched(h, r),
        lambda h, r: assert_nvidia(json.loads(h.read("/outside/daemon.json"))),
    ),
)


def escaping_dir_link(h: Host) -> None:
    make_outside(h)
    h.file("/outside/daemon.json", '{"debug": true}\n')
    h.dir("/etc")
    h.link("/etc/docker", str(h.root.parent / "outside"))  # a machine path, seen in the root


case(
    "dir-symlink-absolute-stays-in-root",
    CONFIGURE,
    escaping_dir_link,
    check=outside_untouched,
)


def stale_temps(h: Host) -> None:
    h.file(DJ, DAEMON_JSON)
    dead = subprocess.Popen(["true"])
    dead.wait()
    h.file(f"/etc/docker/.daemon.json.{TEMP_MARK}{dead.pid}-dead", "x")
    h.file(f"{BACKUPS}/.daemon.json.20200101T000000.000000000.bak.{TEMP_MARK}{dead.pid}-0", "x")


case("stale-temps-swept", CONFIGURE, stale_temps, check=nvidia_in_daemon_json)

# === write errors: errno by errno ===============================================================

case(
    "immutable-file-eperm",
    CONFIGURE,
    both(daemon_json(DAEMON_JSON), lambda h: h.immutable(DJ)),
    code=1,
    says=(DJ, "nothing changed"),
    same=(DJ,),
)
case(
    "immutable-dir-eperm",
    CONFIGURE,
    both(daemon_json(DAEMON_JSON), lambda h: h.immutable("/etc/docker")),
    code=1,
    says=(DJ, "nothing changed"),
    same=("/etc/docker",),
)
case(
    "immutable-bootstrap-still-taints",
    BOOT,
    both(daemon_json(DAEMON_JSON), lambda h: h.immutable(DJ)),
    code=1,
    says=("runtime", DJ),
    same=(DJ,),
    check=taint_written,
)
case(
    "read-only-fs-erofs",
    CONFIGURE,
    both(daemon_json(DAEMON_JSON), lambda h: h.mount_ro("/etc/docker")),
    code=1,
    says=(DJ, "read-only"),
    same=("/etc/docker",),
)
case(
    "read-only-kubelet-dir",
    BOOT,
    both(kubelet_file("KUBELET_EXTRA_ARGS=--v=2\n"), lambda h: h.mount_ro("/etc/default")),
    code=1,
    says=("kubelet-args", KA, "read-only"),
    same=(KA,),
)


def disk_full(h: Host) -> None:
    cfg = h.read(CFG)
    h.tmpfs("/etc", "128k")
    h.tmpfs("/run", "128k")
    h.file(CFG, cfg)
    h.file(DJ, DAEMON_JSON)
    h.file(KA, "KUBELET_EXTRA_ARGS=--v=2\n")
    h.fill("/etc")
    h.fill("/run")


case(
    "disk-full-etc-and-run",
    BOOT,
    disk_full,
    code=1,
    says=("runtime", DJ, "full"),
    same=(DJ, KA, "/etc/docker", "/etc/default"),
)
case(
    "disk-full-configure",
    CONFIGURE,
    disk_full,
    code=1,
    says=(DJ, "full"),
    same=(DJ, "/etc/docker"),
)
for err, says in (
    ("ENOSPC", "full"),
    ("EDQUOT", "quota"),
    ("EIO", DJ),
    ("EROFS", "read-only"),
    ("EACCES", "denied"),
):
    case(
        f"injected-{err.lower()}-on-write",
        CONFIGURE,
        daemon_json(DAEMON_JSON),
        code=1,
        says=(DJ, says),
        same=("/etc/docker",),
        wrap=inject("write", err),
    )
case(
    "injected-eio-on-fsync",
    CONFIGURE,
    daemon_json(DAEMON_JSON),
    code=1,
    says=(DJ,),
    same=("/etc/docker",),
    wrap=inject("fsync", "EIO"),
)
case(
    "injected-exdev-on-replace",
    CONFIGURE,
    daemon_json(DAEMON_JSON),
    code=1,
    says=(DJ,),
    same=("/etc/docker",),
    wrap=inject("replace", "EXDEV"),
)

# === a non-root user ============================================================================

for cmd in (CONFIGURE, BOOT, ROLLBACK):
    case(
        f"non-root-{'-'.join(cmd)}",
        cmd,
        daemon_json(DAEMON_JSON),
        code=1,
        says=("run as root",),
        same=(DJ,),
        nobody=True,
    )
case("non-root-dry-run", DRY, daemon_json(DAEMON_JSON), code=0, same=("/",), nobody=True)
case("non-root-check", CHECK, daemon_json(DAEMON_JSON), code=1, same=("/",), nobody=True)

# === containerd ==================================================================================

case(
    "containerd-comment-only-gets-version",
    CONFIGURE,
    config_toml(STOCK_TOML),
    config=CONTAINERD,
    check=then(
        containerd_has_nvidia(),
        lambda h, r: assert_eq(toml_of(h, CT).get("version"), 2),
        unchanged_on_second_run(*CONFIGURE),
    ),
)


def assert_eq(got: Any, want: Any) -> None:
    assert got == want, f"{got!r} != {want!r}"


case(
    "containerd-comment-only-next-runs-accept",
    CHECK,
    config_toml(STOCK_TOML),
    config=CONTAINERD,
    before=(CONFIGURE,),
    code=1,  # no kubeconfig here: the kube probes fail; the runtime ones must not
    check=lambda h, r: assert_no_line(r, "version 1"),
)


def assert_no_line(r: Run, fragment: str) -> None:
    assert not any(fragment in line for line in r.lines), r.show()


case(
    "containerd-empty-file",
    CONFIGURE,
    config_toml(b""),
    config=CONTAINERD,
    check=then(containerd_has_nvidia(), lambda h, r: assert_eq(toml_of(h, CT).get("version"), 2)),
)
case("containerd-absent", CONFIGURE, config=CONTAINERD, check=containerd_has_nvidia())
case(
    "containerd-kubeadm-config",
    CONFIGURE,
    config_toml(CONTAINERD_TOML),
    config=CONTAINERD,
    check=then(containerd_has_nvidia(), unchanged_on_second_run(*CONFIGURE)),
)
for name, body, key in (
    ("plugins-number", "version = 2\nplugins = 5\n", "plugins"),
    ("plugins-string", 'version = 2\nplugins = "x"\n', "plugins"),
    ("cri-number", f'version = 2\n[plugins]\n"{CRI}" = 5\n', CRI),
    ("cri-containerd-string", f'version = 2\n[plugins."{CRI}"]\ncontainerd = "x"\n', "containerd"),
    (
        "runtimes-number",
        f'version = 2\n[plugins."{CRI}".containerd]\nruntimes = 5\n',
        "runtimes",
    ),
    (
        "runc-entry-string",
        f'version = 2\n[plugins."{CRI}".containerd.runtimes]\nrunc = "x"\n',
        "runc",
    ),
    (
        "options-list",
        f'version = 2\n[plugins."{CRI}".containerd.runtimes.runc]\noptions = [1]\n',
        "options",
    ),
    ("imports-string", 'version = 2\nimports = "conf.d/x.toml"\n', "imports"),
    ("imports-numbers", "version = 2\nimports = [5]\n", "imports"),
    ("version-1", "version = 1\n", "version"),
    ("version-string", 'version = "2"\n', "version"),
    ("version-99", "version = 99\n", "version"),
    ("v1-body", '[plugins.cri]\nsandbox_image = "x"\n', "version"),
    ("malformed", "version = 2\n[plugins\n", CT),
    ("duplicate-table", "version = 2\n[a]\nx = 1\n[a]\nx = 2\n", CT),
    ("nested", "version = 2\nx = " + "[" * 5000 + "]" * 5000 + "\n", CT),
    ("latin1", b"version = 2\n# caf\xe9\n", "UTF-8"),
    ("oversize", "version = 2\n" + "#" * (2 << 20) + "\n", "larger"),
    ("huge-number", "version = 2\nx = 1" + "0" * 5000 + "\n", CT),
    # found by bench/fuzz.py: an import whose name is longer than a file name may be
    ("import-name-too-long", 'version = 2\nimports = ["/etc/containerd/' + "#" * 5000 + '"]\n', CT),
):
    case(
        f"containerd-{name}",
        CONFIGURE,
        config_toml(body),
        config=CONTAINERD,
        code=2,
        says=(CT, key),
        same=("/etc/containerd",),
    )
for name, make, says in (
    ("directory", lambda h: h.dir(CT), "directory"),
    ("fifo", lambda h: h.fifo(CT), "FIFO"),
):
    case(
        f"containerd-config-{name}",
        DRY,
        make,
        config=CONTAINERD,
        code=2,
        says=(CT, says),
        same=("/etc/containerd",),
    )
case(
    "containerd-drop-in-directory",
    CONFIGURE,
    both(config_toml(CONTAINERD_TOML), lambda h: h.dir(DI)),
    config=CONTAINERD,
    code=2,
    says=(DI, "directory"),
    same=("/etc/containerd",),
)
case(
    "containerd-conf-d-is-a-file",
    CONFIGURE,
    both(config_toml(CONTAINERD_TOML), lambda h: h.file("/etc/containerd/conf.d", "x")),
    config=CONTAINERD,
    code=2,
    says=(DI,),
    same=("/etc/containerd",),
)


def registry_password(h: Host) -> None:
    h.file(
        CT,
        CONTAINERD_TOML
        + f'\n[plugins."{CRI}".registry.configs."reg.example.com".auth]\n'
        + '  username = "robot"\n  password = "s3cret-registry-password"\n',
        mode=0o600,
    )


def secret_not_readable(h: Host, r: Run) -> None:
    for p in h.root.rglob("*"):
        if p.is_file() and not p.is_symlink() and b"s3cret-registry-password" in p.read_bytes():
            assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, f"{p} is {oct(p.stat().st_mode)}"
    assert stat.S_IMODE(h.p(DI).stat().st_mode) == 0o600


case(
    "containerd-0600-secret-stays-0600",
    CONFIGURE,
    registry_password,
    config=CONTAINERD,
    check=then(secret_not_readable, mode_is(CT, 0o600)),
)
case(
    "containerd-crlf-kept",
    CONFIGURE,
    config_toml(CONTAINERD_TOML.replace("\n", "\r\n")),
    config=CONTAINERD,
    check=then(lambda h, r: assert_crlf(h.read(CT)), containerd_has_nvidia()),
)


def toml_link(h: Host) -> None:
    h.file("/srv/containerd/config.toml", CONTAINERD_TOML)
    h.link(CT, "/srv/containerd/config.toml")


case(
    "containerd-symlink-target-updated",
    CONFIGURE,
    toml_link,
    config=merge(CONTAINERD, {"runtime": {"containerd": {"use_drop_in": False}}}),
    check=then(
        lambda h, r: assert_link(h, CT, "/srv/containerd/config.toml"),
        lambda h, r: assert_eq(
            set(cri_of(toml_of(h, "/srv/containerd/config.toml"))["runtimes"]), {"runc", "nvidia"}
        ),
    ),
)
EMPTY_TYPE = CONTAINERD_TOML.replace(f'runtime_type = "{RUNC_V2}"', 'runtime_type = ""')


def nvidia_runtime_type(host_path: str) -> Check:
    def check(h: Host, r: Run) -> None:
        entry = cri_of(toml_of(h, host_path))["runtimes"]["nvidia"]
        assert entry["runtime_type"] == RUNC_V2, entry

    return check


case(
    "containerd-empty-runtime-type-drop-in",
    CONFIGURE,
    config_toml(EMPTY_TYPE),
    config=CONTAINERD,
    check=nvidia_runtime_type(DI),
)
case(
    "containerd-empty-runtime-type-in-place",
    CONFIGURE,
    config_toml(EMPTY_TYPE),
    config=merge(CONTAINERD, {"runtime": {"containerd": {"use_drop_in": False}}}),
    check=nvidia_runtime_type(CT),
)
STALE_NVIDIA = CONTAINERD_TOML + (
    f'    [plugins."{CRI}".containerd.runtimes.nvidia]\n'
    f'      runtime_type = "{RUNC_V2}"\n'
    f'      [plugins."{CRI}".containerd.runtimes.nvidia.options]\n'
    '        BinaryName = "/usr/bin/nvidia-container-runtime"\n'
    "        SystemdCgroup = false\n"
)


def nvidia_follows_runc(host_path: str) -> Check:
    def check(h: Host, r: Run) -> None:
        entry = cri_of(toml_of(h, host_path))["runtimes"]["nvidia"]
        assert entry["options"]["SystemdCgroup"] is True, entry

    return check


for mode, path in (("drop-in", DI), ("in-place", CT)):
    case(
        f"containerd-stale-nvidia-options-{mode}",
        CONFIGURE,
        config_toml(STALE_NVIDIA),
        config=merge(CONTAINERD, {"runtime": {"containerd": {"use_drop_in": mode == "drop-in"}}}),
        check=nvidia_follows_runc(path),
    )
    case(
        f"containerd-no-default-demotes-{mode}",
        ("runtime", "configure", "--no-default"),
        config_toml(CONTAINERD_TOML),
        config=merge(CONTAINERD, {"runtime": {"containerd": {"use_drop_in": mode == "drop-in"}}}),
        before=(("runtime", "configure", "--set-as-default"),),
        check=containerd_has_nvidia(default=False),
    )
case(
    "docker-no-default-demotes",
    ("runtime", "configure", "--no-default"),
    daemon_json(DAEMON_JSON),
    before=(("runtime", "configure", "--set-as-default"),),
    check=then(
        lambda h, r: assert_nvidia(json_of(h)),
        lambda h, r: assert_eq(json_of(h).get("default-runtime", "runc"), "runc"),
    ),
)


def glob_import_in_root(h: Host) -> None:
    imports = 'imports = ["/etc/containerd/conf.d/*.toml"]\n'
    h.file(CT, CONTAINERD_TOML.replace("version = 2\n", "version = 2\n" + imports))
    h.file(
        "/etc/containerd/conf.d/10-site.toml",
        f'version = 2\n[plugins."{CRI}"]\n  sandbox_image = "site.example/pause:root-only"\n',
    )


case(
    "containerd-absolute-glob-read-in-root",
    CONFIGURE,
    glob_import_in_root,
    config=CONTAINERD,
    check=lambda h, r: assert_eq(
        toml_of(h, DI)["plugins"][CRI].get("sandbox_image"), "site.example/pause:root-only"
    ),
)

# === kubelet's args file ==========================================================================

for name, make, says, code in (
    ("directory", lambda h: h.dir(KA), "directory", 2),
    ("fifo", lambda h: h.fifo(KA), "FIFO", 2),
    ("unbalanced-quote", kubelet_file('KUBELET_EXTRA_ARGS="--v=2\n'), f"{KA}:1", 2),
    ("latin1", kubelet_file(b"# caf\xe9\nKUBELET_EXTRA_ARGS=--v=2\n"), "UTF-8", 2),
    ("utf16", kubelet_file("KUBELET_EXTRA_ARGS=--v=2\n".encode("utf-16")), "UTF-16", 2),
):
    case(
        f"kubelet-args-{name}",
        BOOT,
        both(daemon_json(DAEMON_JSON), make),
        code=code,
        says=("kubelet-args", KA, says),
        same=(KA,),
        # the runtime step before it is unaffected
        check=nvidia_in_daemon_json,
    )
case(
    "kubelet-args-crlf-and-flags-kept",
    BOOT,
    kubelet_file("# site\r\nKUBELET_EXTRA_ARGS=--v=2 --max-pods=50\r\n"),
    check=then(
        lambda h, r: assert_crlf(h.read(KA)),
        lambda h, r: taint_written(h, r),
        lambda h, r: assert_in("--max-pods=50", h.text(KA)),
        lambda h, r: assert_in("# site", h.text(KA)),
    ),
)


def assert_in(fragment: str, text: str) -> None:
    assert fragment in text, text


def kubelet_link(h: Host) -> None:
    h.file("/srv/kubelet/args", "KUBELET_EXTRA_ARGS=--v=2\n", mode=0o600)
    h.link(KA, "/srv/kubelet/args")


case(
    "kubelet-args-symlink-target-updated",
    BOOT,
    kubelet_link,
    check=then(
        lambda h, r: assert_link(h, KA, "/srv/kubelet/args"),
        lambda h, r: assert_in(TAINT, h.text("/srv/kubelet/args")),
        lambda h, r: mode_is("/srv/kubelet/args", 0o600)(h, r),
    ),
)

# === the agent's own config =====================================================================

for name, body, says in (
    ("complex-key", b"? [a, b]\n: 1\n", "config.yaml"),
    ("top-level-list", b"- a\n- b\n", "config.yaml"),
    ("top-level-string", b"hello\n", "config.yaml"),
    ("latin1", b"node_name: caf\xe9\n", "UTF-8"),
    ("utf16", "node_name: x\n".encode("utf-16"), "UTF-16"),
    ("oversize", b"#" * (2 << 20) + b"\n", "larger"),
    ("tabs", b"runtime:\n\tengine: docker\n", "config.yaml"),
    ("nan-deadline", b"kube:\n  api_deadline_s: .nan\n", "api_deadline_s"),
    ("inf-deadline", b"kube:\n  api_deadline_s: .inf\n", "api_deadline_s"),
    ("negative-deadline", b"kube:\n  api_deadline_s: -1\n", "api_deadline_s"),
    ("huge-float", b"runtime:\n  verify_timeout_s: 1e400\n", "verify_timeout_s"),
    ("nan-redetect", b"daemon:\n  redetect_interval_s: .nan\n", "redetect_interval_s"),
    ("nan-jitter", b"daemon:\n  heartbeat_jitter: .nan\n", "heartbeat_jitter"),
    ("negative-grace", b"kube:\n  unhealthy_grace_s: -5\n", "unhealthy_grace_s"),
    ("backup-keep-0", b"backup_keep: 0\n", "backup_keep"),
    ("backup-keep-negative", b"backup_keep: -3\n", "backup_keep"),
    ("backup-dir-dotdot", b"backup_dir: /../x\n", "backup_dir"),
    ("backup-dir-relative", b"backup_dir: var/backups\n", "backup_dir"),
    ("lock-file-relative", b"lock_file: run/lock\n", "lock_file"),
    ("lock-file-dotdot", b"lock_file: /run/../../lock\n", "lock_file"),
    ("daemon-json-relative", b"runtime:\n  docker:\n    config_file: daemon.json\n", "config_file"),
    ("drop-in-dotdot", b"runtime:\n  containerd:\n    drop_in: /etc/../../x.toml\n", "drop_in"),
    (
        "kubelet-args-relative",
        b"kube:\n  kubelet_args_file: default/kubelet\n",
        "kubelet_args_file",
    ),
    ("state-file-relative", b"daemon:\n  state_file: state.json\n", "state_file"),
    ("nvml-relative", b"nvml_library: libnvidia-ml.so.1\n", "nvml_library"),
    ("pidfile-relative", b"runtime:\n  docker:\n    pidfile: docker.pid\n", "pidfile"),
    ("prefix-kubernetes-io", b"labels:\n  prefix: kubernetes.io\n", "prefix"),
    ("prefix-k8s-io", b"labels:\n  prefix: node.k8s.io\n", "prefix"),
    ("static-bad-value", b'labels:\n  static:\n    team: "a b!"\n', "team"),
    ("static-long-value", b"labels:\n  static:\n    team: " + b"x" * 70 + b"\n", "team"),
    ("static-restricted-key", b"labels:\n  static:\n    kubernetes.io/role: gpu\n", "static"),
    ("anchor-bomb", b"a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n", "config.yaml"),
    ("unknown-key", b"runtime:\n  engin: docker\n", "engin"),
    ("huge-int", b"backup_keep: 1" + b"0" * 5000 + b"\n", "backup_keep"),
):
    case(
        f"config-{name}",
        BOOT_DRY,
        raw_config(body),
        config=None,
        code=2,
        says=(says,),
        same=("/",),
    )
case(
    "config-nan-deadline-check",
    CHECK,
    raw_config(b"kube:\n  api_deadline_s: .nan\n"),
    config=None,
    code=2,
    says=("api_deadline_s",),
    same=("/",),
)
for name, make, says in (
    ("fifo", lambda h: h.fifo(CFG), "FIFO"),
    ("directory", lambda h: h.dir(CFG), "directory"),
    ("device", lambda h: h.device(CFG), "device"),
):
    for cmd in (DETECT, BOOT_DRY, CHECK):
        case(
            f"config-{name}-{cmd[0]}",
            cmd,
            make,
            config=None,
            code=2,
            says=("config.yaml", says),
            same=("/",),
        )
case(
    "explicit-config-fifo",
    DETECT,
    lambda h: h.fifo("/cfg.fifo"),
    config=None,
    globals=("--root", "{root}", "--config", "{root}/cfg.fifo"),
    code=2,
    says=("cfg.fifo", "FIFO"),
)

# === the kubeconfig =============================================================================

for name, body in (
    ("top-level-list", "- a\n- b\n"),
    ("garbage", "not: [a kubeconfig\n"),
    ("empty-object", "{}\n"),
    ("clusters-string", "apiVersion: v1\nkind: Config\nclusters: x\n"),
):
    case(
        f"kubeconfig-{name}-check",
        CHECK,
        lambda h, body=body: h.file(KC, body),
        code=1,
        says=(KC,),
        check=lambda h, r: assert_table(r),
    )


def assert_table(r: Run) -> None:
    assert "credential" in r.out, r.show()  # check printed its table, and the probe is in it


case(
    "kubeconfig-directory-check",
    CHECK,
    lambda h: h.dir(KC),
    code=1,
    says=(KC,),
    check=lambda h, r: assert_table(r),
)

# === --root and the lock ========================================================================

case(
    "root-empty",
    BOOT,
    globals=("--root", ""),
    code=2,
    says=("--root",),
    check=lambda h, r: assert_eq(list(h.cwd.iterdir()), []),
)
case(
    "lock-is-a-directory",
    CONFIGURE,
    both(daemon_json(DAEMON_JSON), lambda h: h.dir(LOCK)),
    code=2,
    says=(LOCK, "directory"),
    same=(DJ,),
)
case(
    "lock-is-a-directory-bootstrap",
    BOOT,
    both(daemon_json(DAEMON_JSON), lambda h: h.dir(LOCK)),
    code=2,
    says=("runtime", LOCK),
    same=(DJ,),
)
case(
    "lock-dir-is-a-file",
    CONFIGURE,
    both(daemon_json(DAEMON_JSON), lambda h: h.file("/run/nodeagent", "x")),
    code=2,
    says=(LOCK,),
    same=(DJ,),
)


def backups_link_outside(h: Host) -> None:
    make_outside(h)
    h.file(DJ, DAEMON_JSON)
    h.dir("/var/lib/nodeagent")
    h.link(BACKUPS, str(h.root.parent / "outside"))


case(
    "backups-dir-symlink-stays-in-root",
    CONFIGURE,
    backups_link_outside,
    check=then(nvidia_in_daemon_json, outside_untouched),
)
case(
    "backups-dir-is-a-file",
    CONFIGURE,
    both(daemon_json(DAEMON_JSON), lambda h: h.file(BACKUPS, "x")),
    code=2,
    says=(BACKUPS,),
    same=(DJ,),
)

# === rollback =====================================================================================

case(
    "rollback-removes-created-file",
    ROLLBACK,
    before=(CONFIGURE,),
    check=absent(DJ),
)
case(
    "rollback-twice-is-once-created",
    ROLLBACK,
    before=(CONFIGURE, ROLLBACK),
    says=("nothing",),
    same=("/etc",),
    check=absent(DJ),
)
case(
    "rollback-restores-bytes",
    ROLLBACK,
    daemon_json(DAEMON_JSON.replace("\n", "\r\n"), mode=0o640),
    before=(CONFIGURE,),
    check=then(
        lambda h, r: assert_eq(h.read(DJ), DAEMON_JSON.replace("\n", "\r\n").encode()),
        lambda h, r: mode_is(DJ, 0o640)(h, r),
    ),
)
case(
    "rollback-twice-is-once",
    ROLLBACK,
    daemon_json(DAEMON_JSON),
    before=(CONFIGURE, ROLLBACK),
    says=("nothing",),
    same=("/etc",),
    check=lambda h, r: assert_eq(h.text(DJ), DAEMON_JSON),
)
case(
    "rollback-three-times-is-once",
    ROLLBACK,
    daemon_json(DAEMON_JSON),
    before=(CONFIGURE, ROLLBACK, ROLLBACK),
    same=("/etc",),
    check=lambda h, r: assert_eq(h.text(DJ), DAEMON_JSON),
)
case(
    "rollback-nothing-to-undo",
    ROLLBACK,
    daemon_json(DAEMON_JSON),
    says=("nothing",),
    same=("/etc", "/var"),
)


def break_daemon_json(h: Host) -> None:
    """The operator's botched hand edit after the agent's change."""
    h.file(DJ, '{"runtimes": {"nvidia": \n', mode=stat.S_IMODE(h.p(DJ).stat().st_mode))


def edit_daemon_json(h: Host) -> None:
    data = json_of(h)
    data["debug"] = True
    h.file(DJ, json.dumps(data, indent=4) + "\n")


case(
    "rollback-when-current-malformed",
    ROLLBACK,
    daemon_json(DAEMON_JSON),
    before=(CONFIGURE, break_daemon_json),
    check=lambda h, r: assert_eq(h.text(DJ), DAEMON_JSON),
)
case(
    "rollback-backup-keep-1",
    ROLLBACK,
    daemon_json(DAEMON_JSON),
    config={"backup_keep": 1},
    before=(CONFIGURE, edit_daemon_json, CONFIGURE),
    check=lambda h, r: assert_nvidia_absent(h),
)


def assert_nvidia_absent(h: Host) -> None:
    data = json_of(h)
    assert "nvidia" not in (data.get("runtimes") or {}), data


case(
    "rollback-containerd-drop-in",
    ROLLBACK,
    config_toml(CONTAINERD_TOML),
    config=CONTAINERD,
    before=(CONFIGURE,),
    check=then(
        lambda h, r: assert_eq(h.text(CT), CONTAINERD_TOML),
        lambda h, r: absent(DI)(h, r),
        lambda h, r: dump(h),
    ),
)
case(
    "rollback-containerd-twice",
    ROLLBACK,
    config_toml(CONTAINERD_TOML),
    config=CONTAINERD,
    before=(CONFIGURE, ROLLBACK),
    says=("nothing",),
    same=("/etc",),
)
case(
    "rollback-containerd-comment-only",
    ROLLBACK,
    config_toml(STOCK_TOML),
    config=CONTAINERD,
    before=(CONFIGURE,),
    check=then(absent(DI), lambda h, r: dump(h)),
)
case(
    "rollback-containerd-in-place",
    ROLLBACK,
    config_toml(CONTAINERD_TOML.replace("\n", "\r\n")),
    config=merge(CONTAINERD, {"runtime": {"containerd": {"use_drop_in": False}}}),
    before=(CONFIGURE,),
    check=lambda h, r: assert_eq(h.read(CT), CONTAINERD_TOML.replace("\n", "\r\n").encode()),
)
case(
    "rollback-containerd-in-place-created",
    ROLLBACK,
    config=merge(CONTAINERD, {"runtime": {"containerd": {"use_drop_in": False}}}),
    before=(CONFIGURE,),
    check=absent(CT),
)

# === environment =================================================================================

for cmd in (BOOT, BOOT_DRY, CHECK, DETECT, CONFIGURE):
    case(
        f"ascii-stdout-{'-'.join(cmd)}",
        cmd,
        daemon_json(DAEMON_JSON),
        code=1 if cmd == CHECK else 0,
        env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"},
    )
case(
    "ascii-stdout-failure-line",
    BOOT,
    daemon_json(b'{"labels": ["caf\xe9"]}\n'),
    code=2,
    says=("runtime", DJ),
    env={"PYTHONIOENCODING": "ascii", "LANG": "C", "LC_ALL": "C"},
)


def pidfile_of_sleep(h: Host) -> None:
    h.file(DJ, DAEMON_JSON)
    h.socket("/run/docker.sock")
    h.file("/usr/bin/nvidia-container-runtime", "#!/bin/sh\n", mode=0o755)
    h.file("/run/docker.pid", f"{h.sleeper('sleep').pid}\n")


def sleep_alive(h: Host, r: Run) -> None:
    proc = h.procs["sleep"]
    time.sleep(0.2)
    assert proc.poll() is None, f"the sleep process named by the pidfile died ({proc.returncode})"


case(
    "pidfile-names-sleep-not-signalled",
    CONFIGURE,
    pidfile_of_sleep,
    config={
        "runtime": {
            "restart_mode": "reload",
            "docker": {
                "pidfile": "/run/docker.pid",
                "host": "unix://{root}/run/docker.sock",
                "restart_command": ["/bin/false"],
            },
        }
    },
    code=1,
    says=("/run/docker.pid",),
    check=sleep_alive,
)
case(
    "run-survives-runtimes-null",
    ("run",),
    daemon_json('{"runtimes": null}\n'),
    run_for=4.0,
    same=(DJ,),
    check=taint_written,
)
case(
    "run-survives-daemon-json-fifo",
    ("run",),
    lambda h: h.fifo(DJ),
    run_for=4.0,
    check=taint_written,
)
case(
    "dry-run-changes-nothing",
    BOOT_DRY,
    daemon_json(DAEMON_JSON),
    same=("/",),
    says=("would change",),
)


# --- the runner ----------------------------------------------------------------------------------


@pytest.fixture
def host(tmp_path: Path, fake_nvml: Any, request: pytest.FixtureRequest) -> Iterator[Host]:
    c: Case = request.param
    base = tmp_path
    python = [sys.executable]
    env = fake_nvml.env("h100x8", COLUMNS="250", NO_COLOR="1")
    if c.nobody:
        # uid 65534 can reach neither pytest's 0700 temp dir nor /root's Python: a
        # world-readable scratch dir, the lib copied into it, the system Python on the venv.
        base = Path(tempfile.mkdtemp(prefix="nodeagent-hostile.", dir="/tmp"))
        base.chmod(0o755)
        lib = base / "lib" / "libnvidia-ml.so.1"
        lib.parent.mkdir()
        shutil.copy(fake_nvml.lib, lib)
        lib.parent.chmod(0o755)
        site = next((REPO / ".venv" / "lib").glob("python3*/site-packages"))
        python = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3"]
        env = {**env, "LD_LIBRARY_PATH": str(lib.parent), "PYTHONPATH": f"{site}:{REPO}"}
    root = base / "root"
    cwd = base / "cwd"
    root.mkdir()
    cwd.mkdir()
    for d in (root, cwd):
        d.chmod(0o755)
    h = Host(root, env, cwd, python)
    try:
        yield h
    finally:
        h.close()
        if c.nobody:
            shutil.rmtree(base, ignore_errors=True)


def _globals(h: Host, c: Case) -> list[str]:
    return [str(fmt(g, root=str(h.root))) for g in c.globals]


@pytest.mark.parametrize("host", CASES, ids=[c.id for c in CASES], indirect=True)
def test_hostile(host: Host, request: pytest.FixtureRequest) -> None:
    c: Case = request.node.callspec.params["host"]
    h = host
    if c.config is not None:
        h.file(CFG, yaml.safe_dump(fmt(merge(BASE_CONFIG, c.config), root=str(h.root))))
    c.setup(h)
    g = _globals(h, c)
    for step in c.before:
        if callable(step):
            step(h)
        else:
            r = h.run(*g, *step)
            assert r.code == 0, r.show()
    before = {p: snapshot(h, p) for p in c.same}
    if c.run_for:
        r = run_daemon(h, g, c)
    elif c.wrap:
        r = h.run(
            *c.wrap, "--", *g, *c.argv, module="tests.crashpoint", env={"PYTHONPATH": str(REPO)}
        )
    else:
        r = h.run(*g, *c.argv, env=c.env, timeout=c.timeout)
    where = r.show()
    print(where)  # in the report of a failing case
    assert "Traceback" not in r.out + r.err, where
    assert r.code == c.code, where
    prose = [line for line in r.err.splitlines() if line.strip() and not line.startswith("{")]
    assert len(prose) <= 1, f"more than one line on stderr:\n{where}"
    if c.says:
        assert any(all(s in line for s in c.says) for line in r.lines), (
            f"no line says {c.says}:\n{where}"
        )
    for p, snap in before.items():
        assert snapshot(h, p) == snap, f"{p} changed:\n{where}"
    assert junk(h.root) == [], where
    if c.check is not None:
        c.check(h, r)


def run_daemon(h: Host, g: list[str], c: Case) -> Run:
    """``nodeagent run`` for ``c.run_for`` seconds: it must still be up, then stop on TERM."""
    argv = h.argv(*g, *c.argv)
    proc = subprocess.Popen(
        argv, cwd=h.cwd, env={**h.env, **c.env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        time.sleep(c.run_for)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    r = Run(argv, proc.returncode, out, err)
    assert alive, f"`run` exited within {c.run_for} s:\n{r.show()}"
    return r


def test_enough_cases() -> None:
    assert len(CASES) >= 80
    assert len({c.id for c in CASES}) == len(CASES), "duplicate case ids"


# --- two agents at once -----------------------------------------------------------------------


def test_concurrent_loser_says_unchanged(tmp_path: Path, fake_nvml: Any) -> None:
    """Two `runtime configure` at once: the first pauses mid-write holding the lock; the
    second plans, waits for the lock, re-reads, and reports that nothing was left to do."""
    root = tmp_path / "root"
    h = Host(root, fake_nvml.env("h100x8"), tmp_path, [sys.executable])
    h.file(CFG, yaml.safe_dump(BASE_CONFIG))
    h.file(DJ, DAEMON_JSON)
    marker = tmp_path / "paused"
    first = subprocess.Popen(
        [sys.executable, "-m", "tests.crashpoint", "--op", "replace", "--name", "daemon.json",
         "--nth", "1", "--action", "pause", "--marker", str(marker), "--",
         "--root", str(root), *CONFIGURE],
        cwd=REPO, env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.02)
        second = subprocess.Popen(
            h.argv("--root", str(root), *CONFIGURE),
            cwd=REPO, env=h.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        time.sleep(1.0)  # it has planned and waits for the lock
        assert second.poll() is None, second.communicate()
        marker.unlink()
        out1, err1 = first.communicate(timeout=20)
        out2, err2 = second.communicate(timeout=40)
    finally:
        for p in (first,):
            if p.poll() is None:
                p.kill()
    assert first.returncode == 0, err1
    assert second.returncode == 0, err2
    assert "changed" in out1, out1
    assert "unchanged" in out2 and "changed /" not in out2, out2
    assert_nvidia(json_of(h))
    assert len(list(h.p(BACKUPS).glob("daemon.json.*.bak"))) == 1
    assert junk(root) == []
