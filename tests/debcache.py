"""Debian packages of other suites, unpacked into a cache for the tests, never installed.

The tests run newer (and older) runtimes, etcd and Go than the host's own: ``apt-get download``
fetches the ``.deb`` of a named suite and ``dpkg -x`` unpacks it under
``/var/cache/nodeagent-debs/<suite>/<package>/<version>/``. apt runs with a private
configuration under the cache (its own sources list, package lists, archives and preferences),
so the host's /etc/apt, its package lists and its installed packages are never touched, on
Debian 12 and 13 alike.

``python -m tests.debcache SUITE PACKAGE ...`` fetches from a shell (``.ci/run`` warms the cache
with it); :func:`unpacked` is what fixtures call. A cache entry is complete once its ``.done``
marker exists, so an interrupted unpack is redone, and a file lock keeps two test workers from
fetching the same package at once.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CACHE = Path(os.environ.get("NODEAGENT_DEB_CACHE", "/var/cache/nodeagent-debs"))
MIRROR = os.environ.get("NODEAGENT_DEB_MIRROR", "http://deb.debian.org/debian")
SUITES = ("bookworm", "trixie", "sid")
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class FetchError(RuntimeError):
    """A package could not be fetched or unpacked (the message says which and why)."""


def _apt_dir() -> Path:
    return CACHE / "apt"


def _apt_options() -> list[str]:
    d = _apt_dir()
    return [
        "-o", f"Dir::Etc::SourceList={d / 'sources.list'}",
        "-o", f"Dir::Etc::SourceParts={d / 'empty'}",
        "-o", f"Dir::Etc::Preferences={d / 'empty' / 'preferences'}",
        "-o", f"Dir::Etc::PreferencesParts={d / 'empty'}",
        "-o", f"Dir::State::Lists={d / 'lists'}",
        "-o", f"Dir::Cache={d / 'cache'}",
        "-o", "APT::Sandbox::User=root",
        "-o", "Debug::NoLocking=1",
        "-o", "Acquire::Retries=3",
        "-q",
    ]  # fmt: skip


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _run(argv: list[str], cwd: Path | None = None, timeout: float = 900) -> str:
    try:
        proc = subprocess.run(
            argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise FetchError(f"{argv[0]}: {e}") from None
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"{' '.join(argv[:2])}: exit {proc.returncode}: {' | '.join(tail)}")
    return proc.stdout


def _update() -> None:
    """Refresh the private package lists (at most once per cache, or when a suite is new)."""
    d = _apt_dir()
    sources = "".join(f"deb [signed-by={KEYRING}] {MIRROR} {suite} main\n" for suite in SUITES)
    stamp = d / "updated"
    list_file = d / "sources.list"
    if stamp.exists() and list_file.exists() and list_file.read_text() == sources:
        return
    for sub in ("lists/partial", "cache/archives/partial", "empty"):
        (d / sub).mkdir(parents=True, exist_ok=True)
    list_file.write_text(sources)
    _run(["apt-get", *_apt_options(), "update"])
    stamp.touch()


def candidate(suite: str, package: str) -> str:
    """The version of ``package`` that ``suite`` offers now (from the private lists)."""
    out = _run(["apt-cache", *_apt_options(), "show", f"{package}/{suite}"])
    for line in out.splitlines():
        if line.startswith("Version: "):
            return line.split(" ", 1)[1].strip()
    raise FetchError(f"{package}/{suite}: no version in apt-cache show")


def _cached(suite: str, package: str) -> Path | None:
    """The newest complete unpack of ``package`` from ``suite`` already in the cache."""
    base = CACHE / suite / package
    if not base.is_dir():
        return None
    done = sorted(p.parent for p in base.glob("*/.done"))
    return done[-1] if done else None


def unpacked(suite: str, package: str, refresh: bool = False) -> Path:
    """The directory ``package`` of ``suite`` is unpacked into (fetched when not cached).

    A cached unpack is used as is unless ``refresh``: a warm cache never goes to the network,
    so a test run does not change under the tests when the suite moves on.
    """
    if suite not in SUITES:
        raise FetchError(f"{suite}: not one of {', '.join(SUITES)}")
    if not refresh and (hit := _cached(suite, package)):
        return hit
    if os.geteuid() != 0:
        raise FetchError(f"{package}/{suite}: fetching needs root (apt-get, dpkg -x)")
    for tool in ("apt-get", "dpkg"):
        if not shutil.which(tool):
            raise FetchError(f"{package}/{suite}: {tool} not found")
    with _locked():
        if not refresh and (hit := _cached(suite, package)):  # another worker fetched it
            return hit
        _update()
        version = candidate(suite, package)
        dest = CACHE / suite / package / version.replace(":", "_")
        if (dest / ".done").exists():
            return dest
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            _run(["apt-get", *_apt_options(), "download", f"{package}/{suite}"], cwd=Path(tmp))
            debs = list(Path(tmp).glob("*.deb"))
            if len(debs) != 1:
                raise FetchError(f"{package}/{suite}: apt-get download left {len(debs)} files")
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir(parents=True)
            _run(["dpkg", "-x", str(debs[0]), str(dest)])
            (dest / ".done").write_text(f"{package} {version} {suite}\n")
        return dest


def _src_apt_options() -> list[str]:
    """The private apt options with their own ``deb-src`` list (the binary lists stay apart)."""
    d = CACHE / "apt-src"
    own = {"SourceList": d / "sources.list", "Lists": d / "lists", "Cache": d / "cache"}
    out = _apt_options()
    for i, opt in enumerate(out):
        key, _, _ = opt.partition("=")
        name = key.rsplit("::", 1)[-1]
        if key.startswith("Dir::") and name in own:
            out[i] = f"{key}={own[name]}"
    return out


def source(suite: str, package: str) -> Path:
    """The unpacked source tree of ``package`` from ``suite`` (``apt-get source``), cached.

    Under ``<cache>/src/<suite>/<package>/<version>/``; the tree is the one directory
    ``dpkg-source -x`` made there (Debian's patches applied).
    """
    if suite not in SUITES:
        raise FetchError(f"{suite}: not one of {', '.join(SUITES)}")
    base = CACHE / "src" / suite / package

    def tree(dest: Path) -> Path:
        dirs = [p for p in dest.iterdir() if p.is_dir()]
        if len(dirs) != 1:
            raise FetchError(f"{package}/{suite}: {len(dirs)} directories in {dest}")
        return dirs[0]

    def hit() -> Path | None:
        done = sorted(p.parent for p in base.glob("*/.done")) if base.is_dir() else []
        return tree(done[-1]) if done else None

    if found := hit():
        return found
    if os.geteuid() != 0:
        raise FetchError(f"{package}/{suite} source: fetching needs root (apt-get)")
    for tool in ("apt-get", "dpkg-source"):
        if not shutil.which(tool):
            raise FetchError(f"{package}/{suite} source: no {tool} (apt-get install dpkg-dev)")
    with _locked():
        if found := hit():
            return found
        d = CACHE / "apt-src"
        for sub in ("lists/partial", "cache/archives/partial", "empty"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        sources = f"deb-src [signed-by={KEYRING}] {MIRROR} {suite} main\n"
        list_file = d / "sources.list"
        if not list_file.exists() or list_file.read_text() != sources:
            list_file.write_text(sources)
            (d / "updated").unlink(missing_ok=True)
        if not (d / "updated").exists():
            _run(["apt-get", *_src_apt_options(), "update"])
            (d / "updated").touch()
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            # apt-get source unpacks with dpkg-source -x itself; the version names the cache entry.
            _run(["apt-get", *_src_apt_options(), "source", f"{package}/{suite}"], cwd=Path(tmp))
            dscs = list(Path(tmp).glob("*.dsc"))
            if len(dscs) != 1:
                raise FetchError(f"{package}/{suite}: apt-get source left {len(dscs)} .dsc files")
            version = dscs[0].stem.split("_", 1)[1]
            dest = base / version.replace(":", "_")
            shutil.rmtree(dest, ignore_errors=True)
            dest.mkdir()
            for p in Path(tmp).iterdir():
                if p.is_dir():
                    p.rename(dest / p.name)
            (dest / ".done").write_text(f"{package} {version} {suite} source\n")
        return tree(dest)


def main(argv: list[str]) -> int:
    if len(argv) < 2:
        print("usage: python -m tests.debcache SUITE PACKAGE [PACKAGE ...]", file=sys.stderr)
        return 2
    suite, packages = argv[0], argv[1:]
    try:
        for package in packages:
            print(unpacked(suite, package))
    except FetchError as e:
        print(f"debcache: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
