#!/usr/bin/python3 -IS
"""/usr/bin/nodeagent of the .deb and .rpm: run nodeagent from the libraries it bundles.

The packages carry every Python library nodeagent needs under /opt/nodeagent/lib: those the
same for every CPython once in ``common``, the compiled ones (pydantic-core, PyYAML, ...) per
CPython minor version in ``cp39`` ... ``cp313``, and those shared by some versions in e.g.
``cp310+cp311+cp312+cp313`` (docs/packaging.md). This script puts the directories for the
running interpreter first on ``sys.path``, most specific first, then ``common``, keeps
bytecode out of /opt (in /var/cache/nodeagent/pycache) and calls ``nodeagent.cli.main:main``.

Nothing installed on the host is ever imported: ``-I`` ignores PYTHON* variables, the user's
site directory and the script's directory, and ``-S`` skips the ``site`` module, so neither
the host's site-packages/dist-packages nor their ``.pth`` files (which can import modules at
start-up) are seen. Run as ``python3 /usr/bin/nodeagent`` (no flags), the same is done by
hand: host entries leave ``sys.path`` and modules a ``.pth`` file imported leave
``sys.modules``.

When ``/usr/bin/python3`` is a version the bundle has no directory for, it re-runs itself with
a supported ``/usr/bin/python3.X`` if the host has one (e.g. python3.11 beside an EL8
python3.6), else fails with one line. It must therefore parse on any Python 3: no
``from __future__ import annotations``, no syntax newer than 3.6.
"""

import os
import sys
from typing import Optional

PREFIX = "/opt/nodeagent"
REEXEC_ENV = "NODEAGENT_LAUNCHER_REEXEC"


def install_root() -> str:
    """The directory standing for ``/``: ``/`` for /usr/bin/nodeagent, X for X/usr/bin/nodeagent.

    A tree unpacked elsewhere (``dpkg-deb -x``, ``rpm2cpio``) runs from itself.
    """
    bindir = os.path.dirname(os.path.realpath(__file__))
    return os.path.dirname(os.path.dirname(bindir))


def bundle_dir(root: str) -> str:
    here = os.path.join(root, PREFIX.lstrip("/"))
    return here if os.path.isdir(os.path.join(here, "lib")) else PREFIX


def lib_dirs(lib: str) -> "list[str]":
    try:
        return sorted(os.listdir(lib))
    except OSError:
        return []


def supported(lib: str) -> "list[str]":
    """The CPython versions the bundle has a directory for, newest first ("3.13")."""
    found = set()
    for name in lib_dirs(lib):
        for tag in name.split("+"):
            if tag.startswith("cp3") and tag[3:].isdigit():
                found.add((3, int(tag[3:])))
    return ["%d.%d" % v for v in sorted(found, reverse=True)]  # noqa: UP031 (any Python 3)


def search_path(lib: str, tag: str) -> "list[str]":
    """The bundle's directories for CPython ``tag`` ("cp311"), most specific first.

    A library used by one version is in cp311, one used by several in e.g.
    cp310+cp311+cp312+cp313 (the same file for each), one used by all in common.
    """
    mine = [name for name in lib_dirs(lib) if tag in name.split("+")]
    mine.sort(key=lambda name: (name.count("+"), name))
    return [os.path.join(lib, name) for name in [*mine, "common"]]


def other_python(root: str, versions: "list[str]") -> Optional[str]:
    """A supported /usr/bin/python3.X to re-run under, unless this is already a re-run."""
    if os.environ.get(REEXEC_ENV):
        return None
    for v in versions:
        path = os.path.join(root, "usr", "bin", "python" + v)
        if os.access(path, os.X_OK) and os.path.realpath(path) != os.path.realpath(sys.executable):
            return path
    return None


def is_host_path(entry: str) -> bool:
    """A sys.path entry that is not the interpreter's standard library."""
    if not entry:
        return True  # the current directory
    parts = os.path.normpath(entry).split(os.sep)
    if "site-packages" in parts or "dist-packages" in parts:
        return True
    real = os.path.realpath(entry)
    stdlib_roots = {os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)}
    return not any(real == r or real.startswith(r.rstrip(os.sep) + os.sep) for r in stdlib_roots)


def setup() -> None:
    """All but running nodeagent: pick the interpreter (re-run or fail), set sys.path."""
    root = install_root()
    bundle = bundle_dir(root)
    lib = os.path.join(bundle, "lib")
    versions = supported(lib)
    mine = "%d.%d" % sys.version_info[:2]  # noqa: UP031 (any Python 3)
    impl = sys.implementation.name
    if impl != "cpython" or mine not in versions:
        alternative = other_python(root, versions)
        if alternative is not None:
            env = dict(os.environ)
            env[REEXEC_ENV] = "1"
            os.execve(alternative, [alternative, "-I", __file__, *sys.argv[1:]], env)
        sys.stderr.write(
            "nodeagent: %s is %s %s; this nodeagent bundles libraries for CPython %s only: "  # noqa: UP031
            "install one of them as /usr/bin/python3 or /usr/bin/python3.X\n"
            % (sys.executable, impl, mine, ", ".join(reversed(versions)) or "(none found)")
        )
        sys.exit(1)

    # Bytecode goes to a cache the packages own (purged with them), not into /opt.
    sys.pycache_prefix = os.path.join(root, "var", "cache", "nodeagent", "pycache")
    bundled = search_path(lib, "cp" + mine.replace(".", ""))
    sys.path[:] = bundled + [p for p in sys.path if not is_host_path(p)]
    for name, module in list(sys.modules.items()):
        where = getattr(module, "__file__", None)
        if where and is_host_path(os.path.dirname(where)):
            del sys.modules[name]  # imported by a host .pth file: import ours instead


def main() -> None:
    setup()
    from nodeagent.cli.main import main as cli_main

    sys.exit(cli_main())


if __name__ == "__main__":
    main()
