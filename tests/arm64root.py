"""An arm64 Debian root and a way to run its programs on this x86_64 machine under qemu-user.

The root is ``debootstrap --arch=arm64 --foreign --variant=minbase --include=python3`` of
bookworm, its second stage run under emulation, cached under ``/var/cache/nodeagent-arm64/``
keyed by what shapes it (like tests/e2e/rootfs.py). It never changes after that: every run
mounts a throwaway overlay over it, whose upper directory holds that test's state.

How arm64 programs run here, without touching the machine's own binfmt_misc: each run enters
new user, mount, PID and network namespaces (the user namespace maps every uid and gid to
itself), mounts a binfmt_misc instance of its own (sandboxed binfmt_misc, Linux >= 6.7) and
registers Debian's ``qemu-aarch64-static`` there with the F flag (opened now, so it need not
be inside the chroot). Every aarch64 ELF that the run execs, directly or from a shell or
dpkg's maintainer scripts, goes through qemu; the registration ends with the namespace.

    python tests/arm64root.py build              build (or find) the root, print its path
    python tests/arm64root.py exec --lower ROOT [--state DIR] [--bind SRC:DST]... -- CMD...

May not touch: the machine's binfmt_misc registrations, its /etc, any running service.
"""

from __future__ import annotations

import argparse
import ctypes
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

CACHE = Path(os.environ.get("NODEAGENT_ARM64_CACHE", "/var/cache/nodeagent-arm64"))
SUITE = "bookworm"
PACKAGES = ("python3",)
LAYOUT_VERSION = "1"  # bump when the steps below change
QEMU = "/usr/bin/qemu-aarch64-static"
# Debian's qemu-user-static registration for aarch64 ELF executables (magic and mask).
MAGIC = r"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00"
MASK = r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff"
CLEAN_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "LC_ALL": "C.UTF-8",
    "HOME": "/root",
    "DEBIAN_FRONTEND": "noninteractive",
}

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_RDONLY = 1
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18


def key() -> str:
    h = hashlib.sha256(f"arm64 {SUITE} {' '.join(PACKAGES)} {LAYOUT_VERSION}".encode())
    return h.hexdigest()[:12]


def why_not() -> Optional[str]:
    """Why the arm64 root cannot be built or run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, namespaces, mounts)"
    for tool, package in (
        ("debootstrap", "debootstrap"),
        (QEMU, "qemu-user-static"),
        ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        ("aarch64-linux-gnu-strip", "binutils-aarch64-linux-gnu"),
    ):
        if shutil.which(tool) is None:
            return f"{tool} not installed (apt-get install {package})"
    probe = subprocess.run(
        [sys.executable, __file__, "probe"], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0:
        return f"cannot register qemu in a private binfmt_misc: {probe.stderr.strip()}"
    return None


def build(cache: Path = CACHE) -> Path:
    """The cached arm64 root, built if absent (concurrent callers wait on a lock)."""
    from tests import packagingscripts

    debroot = packagingscripts.load("debroot")

    def fill(tmp: Path) -> str:
        start = time.monotonic()
        subprocess.run(
            [
                "debootstrap",
                "--arch=arm64",
                "--foreign",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(tmp),
                debroot.mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        first = time.monotonic() - start
        # container=lxc: debootstrap then trusts /dev (bound from the host, since a user
        # namespace may not mknod) instead of failing its mknod test.
        second = run(
            tmp,
            None,
            ["/usr/bin/env", "container=lxc", "/debootstrap/debootstrap", "--second-stage"],
            timeout=3600,
        )
        if second.returncode != 0:
            raise RuntimeError(f"second stage failed:\n{second.stdout[-3000:]}{second.stderr}")
        for deb in (tmp / "var/cache/apt/archives").glob("*.deb"):
            deb.unlink()
        return (
            f"first stage {first:.0f} s, second stage (emulated) "
            f"{time.monotonic() - start - first:.0f} s"
        )

    result: Path = debroot.cached_root(cache, f"rootfs-arm64-{SUITE}-{key()}", fill)
    return result


def run(
    lower: Path,
    state: Optional[Path],
    argv: list[str],
    binds: tuple[tuple[Path, str], ...] = (),
    timeout: float = 600,
) -> subprocess.CompletedProcess[str]:
    """``argv`` run inside ``lower`` under emulation; with ``state``, over an overlay whose
    upper directory is ``state/upper`` (kept between runs), else in ``lower`` itself.
    ``binds``: host paths mounted at paths inside."""
    cmd = [sys.executable, __file__, "exec", "--lower", str(lower)]
    if state is not None:
        cmd += ["--state", str(state)]
    for src, dst in binds:
        cmd += ["--bind", f"{src}:{dst}"]
    return subprocess.run(
        [*cmd, "--", *argv], capture_output=True, text=True, timeout=timeout, check=False
    )


# --- inside the helper process: namespaces, mounts, binfmt_misc -----------------------------

_libc = ctypes.CDLL(None, use_errno=True)


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(src: str, dst: str, fstype: Optional[str], flags: int, data: str = "") -> None:
    rc = _libc.mount(
        src.encode(), dst.encode(), fstype.encode() if fstype else None, flags, data.encode()
    )
    _check(rc, f"mount {fstype or 'bind'} {src} on {dst}")


def _enter_namespaces() -> None:
    """Unshare user, mount, PID and net namespaces, with every id mapped to itself.

    Only a process in the parent user namespace may write a full map, so a child unshares
    and waits while this process writes its maps; the child then forks PID 1 of the new PID
    namespace. This process and the child only wait and pass the exit status on.
    """
    ready_r, ready_w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(go_w)
        _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWNET), "unshare")
        os.write(ready_w, b"1")
        if os.read(go_r, 1) != b"1":
            os._exit(70)
        inner = os.fork()  # PID 1 of the new namespace
        if inner == 0:
            return
        os._exit(os.waitstatus_to_exitcode(os.waitpid(inner, 0)[1]) & 0xFF)
    os.close(ready_w)
    os.close(go_r)
    if os.read(ready_r, 1) != b"1":
        sys.exit(70)
    for name in ("uid_map", "gid_map"):
        Path(f"/proc/{pid}/{name}").write_text("0 0 4294967295\n")
    os.write(go_w, b"1")
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    sys.exit(code & 0xFF if code >= 0 else 128 - code)


def _register_qemu() -> None:
    """A private binfmt_misc with qemu for aarch64 ELF (F: qemu opened now, not in the root)."""
    where = "/proc/sys/fs/binfmt_misc"
    _mount("none", "/", None, MS_REC | MS_PRIVATE)
    _mount("binfmt_misc", where, "binfmt_misc", 0)
    with open(f"{where}/register", "w") as f:
        f.write(f":qemu-aarch64:M::{MAGIC}:{MASK}:{QEMU}:F")


def _exec(lower: Path, state: Optional[Path], binds: list[str], argv: list[str]) -> None:
    _enter_namespaces()
    _register_qemu()
    root = lower
    if state is not None:
        for d in ("upper", "work", "merged"):
            (state / d).mkdir(parents=True, exist_ok=True)
        root = state / "merged"
        opts = f"lowerdir={lower},upperdir={state / 'upper'},workdir={state / 'work'},userxattr"
        _mount("overlay", str(root), "overlay", 0, opts)
    if (root / "proc").is_symlink():  # debootstrap --foreign leaves /proc -> the host's
        (root / "proc").unlink()
        (root / "proc").mkdir()
    _mount("proc", str(root / "proc"), "proc", 0)
    _mount("/dev", str(root / "dev"), None, MS_BIND | MS_REC)
    (root / "tmp").mkdir(exist_ok=True)
    _mount("tmpfs", str(root / "tmp"), "tmpfs", 0, "mode=1777")
    for spec in binds:
        src, dst = spec.split(":", 1)
        target = root / dst.lstrip("/")
        if Path(src).is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.touch()
        _mount(src, str(target), None, MS_BIND)
    os.chroot(root)
    os.chdir("/")
    os.execve(argv[0], argv, CLEAN_ENV)


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("command", choices=("build", "exec", "probe"))
    p.add_argument("--lower", type=Path)
    p.add_argument("--state", type=Path)
    p.add_argument("--bind", action="append", default=[])
    args = sys.argv[1:] if argv is None else argv
    split = args.index("--") if "--" in args else len(args)
    a = p.parse_args(args[:split])
    a.argv = args[split + 1 :]
    if a.command == "probe":  # what exec needs, minus the root
        _enter_namespaces()
        _register_qemu()
        return 0
    if a.command == "exec":
        _exec(a.lower.resolve(), a.state.resolve() if a.state else None, a.bind, a.argv)
    reason = why_not()
    if reason:
        print(f"cannot build: {reason}", file=sys.stderr)
        return 1
    print(build())
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
