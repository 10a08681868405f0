"""A real dockerd (Debian's docker.io) for tests, with everything of its own under one dir.

Layout under ``base`` (kept short: unix socket paths are limited to 108 bytes):
``root/`` is the agent's ``--root``; dockerd reads ``root/etc/docker/daemon.json``; its
data, exec root, socket, pidfile and log are beside it. ``python -m tests.dockerd restart
BASE`` is the restart command the engine is configured with (what ``systemctl restart
docker`` is on a real host); it exits non-zero if dockerd does not come back, like systemctl.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Optional, Union

if __package__ in (None, ""):  # run as a script: `python tests/X.py restart BASE`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.containerd import saved_prefix
from tests.debcache import unpacked
from tests.realparts import alive, needs
from tests.runtimes import Runtime, runtime

BASE_CONFIG = {
    "storage-driver": "vfs",
    "iptables": False,
    "ip6tables": False,
    "ip-masq": False,
    "bridge": "none",
}


def needs_dockerd() -> Optional[str]:
    """Why a real dockerd cannot run here, or None."""
    return needs("dockerd", package="docker.io")


def path_prefix(docker: Runtime) -> str:
    """PATH entries for ``docker``'s suite: dockerd, the docker CLI, and the containerd
    (and shims) dockerd starts for itself — what a machine of that suite runs."""
    parts = [docker.path_prefix]
    if not (docker.tree / "usr" / "bin" / "docker").exists():  # docker.io >= 26: no CLI
        parts.append(str(unpacked(docker.suite, "docker-cli") / "usr" / "bin"))
    parts.append(runtime("containerd", docker.suite).path_prefix)
    return ":".join(parts)


class Dockerd:
    def __init__(self, base: Path, docker: Union[Runtime, str, None] = None) -> None:
        self.base = base
        self.root = base / "root"
        self.config = self.root / "etc" / "docker" / "daemon.json"
        self.sock = base / "d.sock"
        self.pidfile = self.root / "run" / "docker.pid"  # host path /run/docker.pid
        self.log = base / "dockerd.log"
        chosen = path_prefix(docker) if isinstance(docker, Runtime) else docker
        self.path_prefix = saved_prefix(base, chosen)

    def env(self) -> dict[str, str]:
        """The environment of every dockerd and docker this class runs: the root's /usr/bin
        first (dockerd finds a bare runtime name, nvidia-container-runtime, through its
        PATH, as on a real host), then the chosen docker, then this machine's PATH."""
        path = [str(self.root / "usr" / "bin"), self.path_prefix, os.environ.get("PATH", "")]
        return {**os.environ, "PATH": ":".join(p for p in path if p)}

    @property
    def host(self) -> str:
        return f"unix://{self.sock}"

    @property
    def pid(self) -> int:
        return int(self.pidfile.read_text().strip())

    @property
    def extra_args(self) -> list[str]:
        """Flags the agent cannot see (as if set somewhere it does not parse)."""
        f = self.base / "extra-args.json"
        return list(json.loads(f.read_text())) if f.exists() else []

    @extra_args.setter
    def extra_args(self, args: list[str]) -> None:
        (self.base / "extra-args.json").write_text(json.dumps(args))

    def argv(self) -> list[str]:
        return [
            "dockerd",
            "--config-file", str(self.config),
            "--data-root", str(self.base / "data"),
            "--exec-root", str(self.base / "x"),
            "-H", self.host,
            "--pidfile", str(self.pidfile),
            *self.extra_args,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> bool:
        """Start dockerd detached; True once its API answers, False if it exits or times out."""
        self.pidfile.parent.mkdir(parents=True, exist_ok=True)
        self.config.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            proc = subprocess.Popen(
                self.argv(), stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                start_new_session=True, env=self.env(),
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                return False
            if self.sock.is_socket() and self._ping():
                return True
            time.sleep(0.1)
        return False

    def _ping(self) -> bool:
        r = subprocess.run(
            ["docker", "-H", self.host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            timeout=10,
            env=self.env(),
        )
        return r.returncode == 0

    def stop(self, timeout: float = 30.0) -> None:
        try:
            pid = self.pid
        except (OSError, ValueError):
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and alive(pid):
            time.sleep(0.05)
        else:
            os.kill(pid, signal.SIGKILL)
        self.pidfile.unlink(missing_ok=True)

    def restart(self) -> bool:
        self.stop()
        return self.start()

    def docker(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(
            ["docker", "-H", self.host, *args],
            capture_output=True, text=True, timeout=60, env=self.env(),
        )  # fmt: skip
        if check and r.returncode != 0:
            raise RuntimeError(f"docker {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout.strip()

    def info(self) -> dict[str, Any]:
        return dict(json.loads(self.docker("info", "--format", "{{json .}}")))

    def reloads(self) -> int:
        """How many SIGHUP reloads dockerd has logged."""
        if not self.log.exists():
            return 0
        return self.log.read_text(errors="replace").count("Got signal to reload configuration")

    def import_busybox(self, tag: str = "bb:local") -> str:
        """A tiny image from Debian's busybox-static (no registry is reachable here)."""
        busybox = shutil.which("busybox") or "/bin/busybox"
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "tree"
            (tree / "bin").mkdir(parents=True)
            shutil.copy(busybox, tree / "bin" / "busybox")
            for cmd in ("sh", "sleep", "echo", "cat", "true"):
                (tree / "bin" / cmd).symlink_to("busybox")
            tar = Path(tmp) / "img.tar"
            subprocess.run(["tar", "-C", str(tree), "-cf", str(tar), "."], check=True)
            self.docker("import", str(tar), tag)
        return tag

    def teardown(self) -> None:
        """Stop containers, dockerd and its containerd; unmount and remove everything."""
        if self.sock.is_socket():
            ids = self.docker("ps", "-aq", check=False).split()
            if ids:
                self.docker("rm", "-f", *ids, check=False)
        self.stop()
        # dockerd's managed containerd and shims live in the same session as dockerd
        # was started in; anything still holding our exec root goes too.
        for pid_dir in Path("/proc").iterdir():
            if not pid_dir.name.isdigit():
                continue
            try:
                cmdline = (pid_dir / "cmdline").read_bytes()
            except OSError:
                continue
            if str(self.base).encode() in cmdline:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid_dir.name), signal.SIGKILL)
        subprocess.run(["umount", "-R", "-l", str(self.base / "data")], capture_output=True)
        subprocess.run(["umount", "-R", "-l", str(self.base / "x")], capture_output=True)
        shutil.rmtree(self.base, ignore_errors=True)


def write_runtime_standin(root: Path) -> Path:
    """``/usr/bin/nvidia-container-runtime`` under ``root``: records each call, runs runc."""
    path = root / "usr" / "bin" / "nvidia-container-runtime"
    path.parent.mkdir(parents=True, exist_ok=True)
    calls = root / "nvidia-runtime-calls"
    path.write_text(f'#!/bin/sh\necho "$@" >> {calls}\nexec runc "$@"\n')
    path.chmod(0o755)
    return path


def main(argv: list[str]) -> int:
    if len(argv) == 2 and argv[0] == "restart":  # the dockerd saved under BASE
        return 0 if Dockerd(Path(argv[1])).restart() else 1
    print("usage: python -m tests.dockerd restart BASE", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
