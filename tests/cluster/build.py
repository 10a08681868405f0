"""Kubernetes binaries for the tests, built once from Debian's source package, cached by version.

Debian 12's ``kubernetes`` *source* package is the whole 1.20.2 tree with ``vendor/`` (newer
suites repack it without, and cannot be built offline), so it is always bookworm's, on Debian 12
and 13 hosts alike; so is the Go that builds it (``golang-1.19-go`` + ``golang-1.19-src``: Debian
13's Go 1.24 is not what 1.20.2 was built with). Everything comes through ``tests/debcache.py``
(a private apt configuration; the host's /etc/apt and installed packages are never touched).

The build is the one Debian's own ``debian/rules`` runs: GOPATH mode (``GOPATH/src/k8s.io/
kubernetes`` a symlink to a copy of the tree, ``cd`` through it), ``CGO_ENABLED=0``,
``make WHAT="cmd/kube-apiserver ..."`` (a plain ``go build`` misses the OpenAPI code ``make``
generates). The outputs land in ``/var/cache/nodeagent-kube/<version>/bin/`` with a ``.done``
marker, under a file lock (two pytest-xdist workers may ask at once); the copy of the tree is
removed afterwards, with the Go build cache ``make`` keeps inside it (``hack/lib/golang.sh`` sets
``GOCACHE`` under ``_output/``): only the binaries are cached, and a rebuild is a cold one.
The build's one use of ``rsync`` is to place the binaries (``rsync -pc FILE DIR``): when the
host has none, a two-line stand-in doing ``cp -p`` goes on the build's PATH.

etcd is Debian 12's ``etcd-server`` (3.4), unpacked the same way.

``python -m tests.cluster.build`` builds (or finds) them from a shell and prints the directory.
This module may not start any of the binaries: that is ``controlplane.py``'s.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests import debcache

#: The Kubernetes version the tests run (the upstream tree inside bookworm's source package).
VERSION = "1.20.2"
SUITE = "bookworm"
CACHE = Path(os.environ.get("NODEAGENT_KUBE_CACHE", "/var/cache/nodeagent-kube"))
COMPONENTS = ("kube-apiserver", "kube-scheduler", "kube-controller-manager", "kubelet")
GO_PACKAGES = ("golang-1.19-go", "golang-1.19-src")
#: A cold build takes 5-10 min on 2 shared cores; past this it is stuck.
BUILD_TIMEOUT_S = 3600.0

_RSYNC_STANDIN = """#!/bin/sh
# Stand-in for the build's one rsync call, `rsync -pc FILE DIR` (hack/lib/golang.sh).
[ "$1" = "-pc" ] && [ $# -eq 3 ] || { echo "rsync stand-in: unexpected: $*" >&2; exit 2; }
exec cp -p "$2" "$3"
"""


class BuildError(RuntimeError):
    """The binaries could not be fetched or built (the message says what and where the log is)."""


@dataclass(frozen=True)
class KubeBinaries:
    """Where the control plane's executables are: the built ``bin`` and Debian's etcd."""

    bin: Path
    etcd: Path
    version: str

    def path(self, component: str) -> Path:
        """The executable of ``component`` (one of :data:`COMPONENTS`)."""
        if component not in COMPONENTS:
            raise ValueError(f"{component}: not one of {', '.join(COMPONENTS)}")
        return self.bin / component


def bin_dir(version: str = VERSION) -> Path:
    """The cache directory of ``version``'s binaries (complete once ``.done`` exists)."""
    return CACHE / version / "bin"


def is_built(version: str = VERSION) -> bool:
    """The binaries are in the cache (``.done`` and every component present)."""
    d = bin_dir(version)
    return (d / ".done").exists() and all((d / c).is_file() for c in COMPONENTS)


@contextlib.contextmanager
def _locked(version: str) -> Iterator[None]:
    (CACHE / version).mkdir(parents=True, exist_ok=True)
    with (CACHE / version / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def go_root() -> Path:
    """A GOROOT of bookworm's Go 1.19: the two packages merged, as dpkg would install them.

    ``golang-1.19-go``'s ``/usr/lib/go-1.19/src`` is a symlink into ``golang-1.19-src``'s
    ``/usr/share/go-1.19``; unpacked apart, the link dangles, so both are copied (hard links)
    into one tree.
    """
    trees = [debcache.unpacked(SUITE, p) for p in GO_PACKAGES]
    version = trees[0].name
    dest = CACHE / "go" / version
    root = dest / "usr" / "lib" / "go-1.19"
    if (dest / ".done").exists():
        return root
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for tree in trees:
        _run(["cp", "-al", f"{tree / 'usr'}", str(dest)], dest / "cp.log", timeout=600)
    if not (root / "bin" / "go").is_file() or not (root / "src" / "runtime").is_dir():
        raise BuildError(f"{root}: no bin/go or src/runtime after merging {', '.join(GO_PACKAGES)}")
    (dest / ".done").write_text(f"{' '.join(GO_PACKAGES)} {version}\n")
    return root


def etcd() -> Path:
    """Debian 12's etcd (``etcd-server``), unpacked."""
    path = debcache.unpacked(SUITE, "etcd-server") / "usr" / "bin" / "etcd"
    if not path.is_file():
        raise BuildError(f"{path}: not in bookworm's etcd-server")
    return path


def _run(argv: list[str], log: Path, timeout: float, **kw: object) -> None:
    """Run ``argv`` with its output appended to ``log``; a failure names the log's tail."""
    with log.open("a") as out:
        out.write(f"$ {' '.join(argv)}\n")
        out.flush()
        try:
            proc = subprocess.run(
                argv, stdout=out, stderr=subprocess.STDOUT, timeout=timeout, check=False, **kw
            )  # type: ignore[call-overload]
        except subprocess.TimeoutExpired:
            raise BuildError(f"{log}: {argv[0]} still running after {timeout:.0f} s") from None
        except OSError as e:
            raise BuildError(f"{argv[0]}: {e}") from None
    if proc.returncode != 0:
        tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-5:])
        raise BuildError(f"{log}: {argv[0]} exit {proc.returncode}: {tail}")


def build(version: str = VERSION, say: object = None) -> Path:
    """The cached binaries of ``version``, building them when absent; returns :func:`bin_dir`."""
    if version != VERSION:
        raise BuildError(f"{version}: only {VERSION} (bookworm's source) can be built here")
    if is_built(version):
        return bin_dir(version)
    if os.geteuid() != 0:
        raise BuildError(f"{bin_dir(version)}: absent, and building it needs root (apt-get)")
    if not shutil.which("make"):
        raise BuildError("make: not found (apt-get install make)")
    with _locked(version):
        if is_built(version):  # another worker built it while this one waited
            return bin_dir(version)
        try:
            source = debcache.source(SUITE, "kubernetes")
            goroot = go_root()
        except debcache.FetchError as e:
            raise BuildError(str(e)) from None
        _build_locked(version, source, goroot, say)
    return bin_dir(version)


def _build_locked(version: str, source: Path, goroot: Path, say: object) -> None:
    top = CACHE / version
    work = top / "work"
    log = top / "build.log"
    log.write_text(f"building Kubernetes {version} from {source} with {goroot}\n")
    shutil.rmtree(work, ignore_errors=True)
    tree = work / "tree"
    gopath = work / "gopath"
    link = gopath / "src" / "k8s.io" / "kubernetes"
    link.parent.mkdir(parents=True)
    (work / "home").mkdir()
    # A copy: make writes generated code and _output/ into the tree; the cached source stays clean.
    _run(["cp", "-a", str(source), str(tree)], log, timeout=600)
    link.symlink_to(tree)
    tools = work / "tools"
    tools.mkdir()
    if not shutil.which("rsync"):
        standin = tools / "rsync"
        standin.write_text(_RSYNC_STANDIN)
        standin.chmod(0o755)
    env = {
        "PATH": f"{goroot / 'bin'}:{tools}:/usr/local/bin:/usr/bin:/bin",
        "GOROOT": str(goroot),
        "GOPATH": str(gopath),
        "GOFLAGS": "",
        "GOTOOLCHAIN": "local",
        "HOME": str(work / "home"),
        "CGO_ENABLED": "0",
        "LANG": "C.UTF-8",
    }
    what = " ".join(f"cmd/{c}" for c in COMPONENTS)
    start = time.monotonic()
    if callable(say):
        say(f"building {what} (log: {log})")
    _run(["nice", "make", f"WHAT={what}"], log, timeout=BUILD_TIMEOUT_S, cwd=str(link), env=env)
    out = tree / "_output" / "bin"
    dest = bin_dir(version)
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for c in COMPONENTS:
        if not (out / c).is_file():
            raise BuildError(f"{log}: make left no {out / c}")
        shutil.copy2(out / c, dest / c)
    elapsed = time.monotonic() - start
    (dest / ".done").write_text(
        f"kubernetes {version} from {source.name}; make took {elapsed:.0f} s\n"
    )
    shutil.rmtree(work, ignore_errors=True)


def binaries(version: str = VERSION) -> KubeBinaries:
    """The control plane's executables, built or fetched when absent (what fixtures call)."""
    try:
        return KubeBinaries(bin=build(version), etcd=etcd(), version=version)
    except debcache.FetchError as e:
        raise BuildError(str(e)) from None


def main(argv: list[str]) -> int:
    if argv:
        print("usage: python -m tests.cluster.build", file=sys.stderr)
        return 2
    start = time.monotonic()
    try:
        found = binaries()
    except BuildError as e:
        print(f"tests.cluster.build: {e}", file=sys.stderr)
        return 1
    print(f"{found.bin} (etcd {found.etcd}) in {time.monotonic() - start:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
