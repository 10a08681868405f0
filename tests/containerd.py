"""A real containerd (Debian's containerd) for tests, with everything under one dir.

Layout under ``base``: ``root/`` is the agent's ``--root``; containerd reads
``root/etc/containerd/config.toml``, whose ``root``, ``state`` and ``grpc.address`` point
beside it (the machine's /etc/containerd and /run/containerd are never touched).
``python tests/containerd.py restart BASE`` is the restart command the engine is
configured with, the stand-in for ``systemctl restart containerd``: it exits non-zero
when containerd does not come back, like systemctl.

Which containerd: the host's by default. ``Containerd(base, runtime("containerd", "sid"))``
(a :class:`tests.runtimes.Runtime`, or a PATH prefix string) runs that one instead:
``containerd``, its shims and ``ctr`` come first on every PATH this class uses, the host's
runc stays. The choice is saved under ``base`` (``path-prefix``), so ``restart BASE``
starts the same binary again. :attr:`Containerd.config_version` is the config version
that containerd writes natively (2 for 1.x, 3 for 2.x) and :meth:`~Containerd.base_toml`
uses it. Example::

    c = Containerd(Path(tempfile.mkdtemp(dir="/tmp")), runtime("containerd", "sid"))
    c.config.parent.mkdir(parents=True)
    c.config.write_text(c.base_toml())
    assert c.start(), c.log.read_text()
    ...
    c.teardown()
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional, Union

if __package__ in (None, ""):  # run as a script: `python tests/X.py restart BASE`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.realparts import alive, needs
from tests.runtimes import Runtime


def needs_containerd() -> Optional[str]:
    """Why a real containerd cannot run here, or None."""
    return needs("containerd", "ctr", package="containerd")


def saved_prefix(base: Path, runtime: Union[Runtime, str, None]) -> str:
    """The PATH prefix of ``runtime`` (saved under ``base``), or the one saved before
    ("" for the host's own binaries)."""
    saved = base / "path-prefix"
    if runtime is None:
        return saved.read_text().strip() if saved.exists() else ""
    prefix = runtime if isinstance(runtime, str) else runtime.path_prefix
    base.mkdir(parents=True, exist_ok=True)
    saved.write_text(prefix + "\n")
    return prefix


class Containerd:
    def __init__(self, base: Path, runtime: Union[Runtime, str, None] = None) -> None:
        self.base = base
        self.root = base / "root"
        self.config = self.root / "etc" / "containerd" / "config.toml"
        self.sock = base / "c.sock"
        self.pidfile = base / "containerd.pid"
        self.log = base / "containerd.log"
        self.path_prefix = saved_prefix(base, runtime)

    def env(self) -> dict[str, str]:
        """The environment of every containerd and ctr this class runs: the root's
        /usr/bin first (a bare runtime name, nvidia-container-runtime, is found there, as on
        a real host), then the chosen containerd, then this machine's PATH."""
        path = [str(self.root / "usr" / "bin"), self.path_prefix, os.environ.get("PATH", "")]
        return {**os.environ, "PATH": ":".join(p for p in path if p)}

    @functools.cached_property
    def version(self) -> tuple[int, int, int]:
        """The version ``containerd --version`` says."""
        out = subprocess.run(
            ["containerd", "--version"], capture_output=True, text=True, timeout=30,
            env=self.env(),
        ).stdout  # fmt: skip
        m = re.search(r" v?(\d+)\.(\d+)\.(\d+)", out)
        if not m:
            raise RuntimeError(f"containerd --version: no version in {out!r}")
        return (int(m[1]), int(m[2]), int(m[3]))

    @property
    def config_version(self) -> int:
        """The config version this containerd writes natively (1.x: 2, 2.x: 3)."""
        return 3 if self.version[0] >= 2 else 2

    def base_toml(self) -> str:
        """The host's own settings: where containerd keeps its state, for this sandbox."""
        return (
            f"version = {self.config_version}\n"
            f'root = "{self.base}/data"\n'
            f'state = "{self.base}/state"\n'
            "\n[grpc]\n"
            f'  address = "{self.sock}"\n'
        )

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    def start(self, timeout: float = 30.0) -> bool:
        """Start containerd detached; True once it answers, False if it exits or times out."""
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)], stdout=out, stderr=out,
                stdin=subprocess.DEVNULL, start_new_session=True, env=self.env(),
            )  # fmt: skip
        self.pidfile.write_text(f"{proc.pid}\n")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if self.sock.is_socket() and self.ctr("version", check=False) is not None:
                return True
            time.sleep(0.1)
        return False

    def ctr(self, *args: str, check: bool = True) -> Optional[str]:
        r = subprocess.run(
            ["ctr", "--address", str(self.sock), *args],
            capture_output=True, text=True, timeout=30, env=self.env(),
        )  # fmt: skip
        if r.returncode != 0:
            if check:
                raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
            return None
        return r.stdout

    def cri_status(self) -> str:
        """The CRI plugins' status as ``ctr plugins ls`` shows it: ok, or the first that is
        not (1.x has one, ``io.containerd.grpc.v1 cri``; 2.x splits it into ``cri``,
        ``io.containerd.cri.v1 runtime`` and ``images``, any of which may fail)."""
        found = []
        for line in (self.ctr("plugins", "ls") or "").splitlines():
            cols = line.split()
            if cols[:2] == ["io.containerd.grpc.v1", "cri"] or cols[:1] == ["io.containerd.cri.v1"]:
                found.append(cols[-1])
        if not found:
            return "absent"
        return next((status for status in found if status != "ok"), "ok")

    def config_dump(self) -> str:
        """``containerd config dump`` of :attr:`config`, by this containerd, from ``/``
        (where containerd under systemd resolves a relative glob import)."""
        out = subprocess.run(
            ["containerd", "--config", str(self.config), "config", "dump"],
            capture_output=True, text=True, timeout=30, cwd="/", env=self.env(),
        )  # fmt: skip
        if out.returncode != 0:
            raise RuntimeError(f"containerd config dump: {out.stderr.strip()}")
        return out.stdout

    def stop(self, timeout: float = 30.0) -> None:
        try:
            pid = self.pid
        except (OSError, ValueError):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        self.pidfile.unlink(missing_ok=True)
        self.sock.unlink(missing_ok=True)

    def restart(self) -> bool:
        self.stop()
        return self.start()

    def teardown(self) -> None:
        self.stop()
        for sub in ("data", "state"):
            subprocess.run(["umount", "-R", "-l", str(self.base / sub)], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "restart":  # the containerd saved under BASE
        return 0 if Containerd(Path(argv[1])).restart() else 1
    print("usage: python tests/containerd.py restart BASE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
