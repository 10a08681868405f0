"""A real containerd (Debian's containerd) for tests, with everything under one dir.

Layout under ``base``: ``root/`` is the agent's ``--root``; containerd reads
``root/etc/containerd/config.toml``, whose ``root``, ``state`` and ``grpc.address`` point
beside it (the machine's /etc/containerd and /run/containerd are never touched).
``python tests/containerd.py restart BASE`` is the restart command the engine is
configured with, the stand-in for ``systemctl restart containerd``: it exits non-zero
when containerd does not come back, like systemctl.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

if __package__ in (None, ""):  # run as a script: `python tests/X.py restart BASE`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.realparts import alive, needs


def needs_containerd() -> Optional[str]:
    """Why a real containerd cannot run here, or None."""
    return needs("containerd", "ctr", package="containerd")


class Containerd:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.root = base / "root"
        self.config = self.root / "etc" / "containerd" / "config.toml"
        self.sock = base / "c.sock"
        self.pidfile = base / "containerd.pid"
        self.log = base / "containerd.log"

    def base_toml(self) -> str:
        """The host's own settings: where containerd keeps its state, for this sandbox."""
        return (
            "version = 2\n"
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
        env = {**os.environ, "PATH": f"{self.root / 'usr' / 'bin'}:{os.environ.get('PATH', '')}"}
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                ["containerd", "--config", str(self.config)], stdout=out, stderr=out,
                stdin=subprocess.DEVNULL, start_new_session=True, env=env,
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
            ["ctr", "--address", str(self.sock), *args], capture_output=True, text=True, timeout=30
        )
        if r.returncode != 0:
            if check:
                raise RuntimeError(f"ctr {' '.join(args)}: {r.stderr.strip()}")
            return None
        return r.stdout

    def cri_status(self) -> str:
        """The CRI plugin's status as ``ctr plugins ls`` shows it (ok / error)."""
        for line in (self.ctr("plugins", "ls") or "").splitlines():
            cols = line.split()
            if cols[:2] == ["io.containerd.grpc.v1", "cri"]:
                return cols[-1]
        return "absent"

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
    if len(argv) == 2 and argv[0] == "restart":
        return 0 if Containerd(Path(argv[1])).restart() else 1
    print("usage: python tests/containerd.py restart BASE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
