"""A throwaway systemd machine: an overlay over the cached rootfs, booted by systemd-nspawn.

What works on these CI machines (../shared/notes/e2e-boot.md): ``systemd-nspawn -b`` with
``--register=no --keep-unit`` (no host systemd), ``--private-network`` (dockerd needs
CAP_NET_ADMIN in its own netns, and nothing leaves the machine), ``@keyring`` allowed (``docker
run``), docker's data on a plain bind mount (overlay2 cannot sit on overlayfs), and commands
run inside through ``nsenter`` into the container's systemd (PID 1 inside).

The machine gets its own child cgroup in every hierarchy, so everything it and its docker
start is found and removed afterwards, and a ``Network`` helper binds sockets inside its
network namespace: the test API server listens on the machine's own loopback.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, Optional

import yaml

CLONE_NEWNET = 0x40000000

# A test-image-only unit: docker run needs the cgroup v1 controllers writable inside nspawn.
CGROUP_RW_UNIT = """[Unit]
Description=e2e: make cgroup v1 controllers writable for docker (nspawn only)
DefaultDependencies=no
Before=containerd.service docker.service
ConditionVirtualization=systemd-nspawn

[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for d in /sys/fs/cgroup/*/; do mount -o remount,bind,rw "$d" || true; done'

[Install]
WantedBy=sysinit.target
"""


def _own_cgroups() -> dict[str, str]:
    """{hierarchy mount dir: this process's path in it} for every cgroup hierarchy."""
    out: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hid, controllers, path = line.split(":", 2)
        if hid == "0":
            name = "unified"
        elif controllers.startswith("name="):
            name = controllers[len("name=") :]
        else:
            name = controllers.split(",")[0]
        base = Path("/sys/fs/cgroup") / name
        if not base.is_dir():
            base = Path("/sys/fs/cgroup")  # pure v2
        out[str(base)] = path
    return out


class Machine:
    """One booted machine. ``with Machine(...) as m:`` boots it and always tears it down."""

    def __init__(
        self,
        pristine: Path,
        work: Path,
        name: str = "gpu-node-1",
        *,
        binds: tuple[tuple[Path, str, bool], ...] = (),
        netns: Optional[Path] = None,
    ) -> None:
        """``binds``: (host dir, dir in the machine, read-only) to bind-mount at boot.
        ``netns``: a network namespace file (``ip netns add``) for the machine to join
        instead of a private network of its own, so that servers can be started in it
        before the machine boots (``in_netns``)."""
        self.pristine = pristine
        self.work = work
        self.name = name
        self.binds = binds
        self.netns = netns
        self.root = work / "merged"  # the machine's / as seen from the host
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.pid1: Optional[int] = None
        self.booted_at = 0.0
        self.cgroups: list[Path] = []
        self.console = work / "console.log"

    # --- lifecycle ----------------------------------------------------------------------

    def prepare(self) -> Machine:
        """Mount the overlay; the caller then adds files under ``root`` before ``boot``."""
        for d in ("upper", "overlay-work", "merged", "docker", "containerd"):
            (self.work / d).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                "mount", "-t", "overlay", "overlay", "-o",
                f"lowerdir={self.pristine},upperdir={self.work / 'upper'},"
                f"workdir={self.work / 'overlay-work'}",
                str(self.root),
            ],
            check=True,
        )  # fmt: skip
        unit = self.root / "etc/systemd/system/e2e-cgroup-rw.service"
        unit.write_text(CGROUP_RW_UNIT)
        wants = self.root / "etc/systemd/system/sysinit.target.wants"
        wants.mkdir(parents=True, exist_ok=True)
        (wants / unit.name).symlink_to(f"../{unit.name}")
        return self

    def boot(self, timeout: float = 30.0) -> Machine:
        """Start systemd-nspawn in its own cgroups; return once PID 1 inside is systemd."""
        cg = f"nodeagent-e2e-{os.getpid()}-{self.name}"
        self.cgroups = []
        for base, path in _own_cgroups().items():
            d = Path(base) / path.lstrip("/") / cg
            try:
                d.mkdir(exist_ok=True)
            except OSError:
                continue
            self.cgroups.append(d)
        procs = " ".join(f"{d}/cgroup.procs" for d in self.cgroups)
        argv = [
            "systemd-nspawn", "-q", "-D", str(self.root), "-M", self.name, "-b",
            "--register=no", "--keep-unit", "--console=passive",
            # a joined namespace is not "private" to nspawn, which then drops CAP_NET_ADMIN
            # (dockerd needs it in there); the namespace is the test's own all the same
            *(
                (f"--network-namespace-path={self.netns}", "--capability=CAP_NET_ADMIN")
                if self.netns
                else ("--private-network",)
            ),
            "--system-call-filter=@keyring",
            f"--bind={self.work / 'docker'}:/var/lib/docker",
            f"--bind={self.work / 'containerd'}:/var/lib/containerd",
            *(f"--bind{'-ro' if ro else ''}={host}:{inside}" for host, inside, ro in self.binds),
        ]  # fmt: skip
        script = f'for f in {procs}; do echo $$ > "$f" 2>/dev/null; done; exec "$@"'
        with self.console.open("ab") as out:
            self.proc = subprocess.Popen(
                ["sh", "-c", script, "sh", *argv],
                stdout=out,
                stderr=out,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.booted_at = time.monotonic()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nspawn exited: {self.console.read_text()[-3000:]}")
            self.pid1 = self._find_pid1()
            if self.pid1:
                return self
            time.sleep(0.02)
        raise RuntimeError("no systemd inside the container")

    def _find_pid1(self) -> Optional[int]:
        assert self.proc is not None
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        try:
            pids = children.read_text().split()
        except OSError:
            return None
        for pid in pids:
            with contextlib.suppress(OSError):
                if Path(f"/proc/{pid}/comm").read_text().strip() == "systemd":
                    return int(pid)
        return None

    def poweroff(self, timeout: float = 30.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.run("systemctl", "poweroff", "--no-block", timeout=10)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        for d in self.cgroups:  # anything left (shims, containers): gone
            for _ in range(50):
                try:
                    pids = (d / "cgroup.procs").read_text().split()
                except OSError:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, ValueError):
                        os.kill(int(pid), signal.SIGKILL)
                _rmdir_tree(d)
                if not d.exists():
                    break
                time.sleep(0.1)

    def teardown(self) -> None:
        self.poweroff()
        for mnt in (self.root,):
            subprocess.run(["umount", "-R", "-l", str(mnt)], capture_output=True)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self) -> Machine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.teardown()

    # --- inside -------------------------------------------------------------------------

    def run(
        self,
        *argv: str,
        timeout: float = 60,
        check: bool = False,
        env: Optional[dict[str, str]] = None,
    ) -> subprocess.CompletedProcess[str]:
        """``argv`` inside the machine (all its namespaces), as root."""
        assert self.pid1 is not None
        base = {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG": "C.UTF-8",
        }
        r = subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-a", "env", "-i",
             *[f"{k}={v}" for k, v in {**base, **(env or {})}.items()], *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
        )  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stdout}{r.stderr}")
        return r

    def wait(self, what: str, probe: Callable[[], bool], timeout: float) -> float:
        """Seconds since boot when ``probe()`` first held."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if probe():
                return time.monotonic() - self.booted_at
            assert self.proc is not None and self.proc.poll() is None, "the machine stopped"
            time.sleep(0.05)
        raise AssertionError(f"{what} not within {timeout} s; journal:\n{self.journal()[-6000:]}")

    def unit_active(self, unit: str) -> bool:
        return self.run("systemctl", "is-active", unit, timeout=10).stdout.strip() == "active"

    def journal(self, *args: str) -> str:
        r = self.run("journalctl", "--no-pager", "-o", "short-monotonic", *args, timeout=30)
        return r.stdout + r.stderr

    @contextlib.contextmanager
    def in_network(self) -> Iterator[None]:
        """This thread inside the machine's network namespace (sockets created here, and
        threads and processes started here, stay in it); back to the host's afterwards."""
        assert self.pid1 is not None
        with in_netns(Path(f"/proc/{self.pid1}/ns/net")):
            yield


@contextlib.contextmanager
def in_netns(ns: Path) -> Iterator[None]:
    """This thread inside the network namespace ``ns`` (a /proc/PID/ns/net or an
    ``ip netns`` file) for the block; back to its own afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    theirs = os.open(ns, os.O_RDONLY)
    try:
        if libc.setns(theirs, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns} failed")
        try:
            yield
        finally:
            if libc.setns(own, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back failed")
    finally:
        os.close(own)
        os.close(theirs)


@contextlib.contextmanager
def named_netns(name: str) -> Iterator[Path]:
    """A fresh network namespace (``ip netns add``) with its loopback up, deleted after."""
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    try:
        subprocess.run(
            ["ip", "-n", name, "link", "set", "lo", "up"], check=True, capture_output=True
        )
        yield Path("/run/netns") / name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False, capture_output=True)


def install_kubelet_conf(root: Path, kubeconfig: Path) -> None:
    """``/etc/kubernetes/kubelet.conf`` under the machine's ``root`` and the certificate
    files it names under ``/etc/kubernetes/pki``, as ``kubeadm join`` leaves them, from a
    host-side ``kubeconfig`` whose files are absolute host paths."""
    doc = yaml.safe_load(kubeconfig.read_text())
    pki = root / "etc/kubernetes/pki"
    pki.mkdir(parents=True, exist_ok=True)
    for section, keys in (
        ("clusters", ("certificate-authority",)),
        ("users", ("client-certificate", "client-key")),
    ):
        for item in doc[section]:
            body = item.get("cluster") or item.get("user")
            for k in keys:
                src = Path(body[k])
                (pki / src.name).write_bytes(src.read_bytes())
                body[k] = f"/etc/kubernetes/pki/{src.name}"
    conf = root / "etc/kubernetes/kubelet.conf"
    conf.write_text(yaml.safe_dump(doc, sort_keys=False))
    conf.chmod(0o600)


def _rmdir_tree(d: Path) -> None:
    for sub in sorted((p for p in d.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        with contextlib.suppress(OSError):
            sub.rmdir()
    with contextlib.suppress(OSError):
        d.rmdir()


def start_thread(fn: Callable[[], Any], name: str) -> threading.Thread:
    t = threading.Thread(target=fn, name=name, daemon=True)
    t.start()
    return t
