"""The pristine Debian root file system the boot tests start from, built once and cached.

``debootstrap --variant=minbase`` of bookworm with systemd, cloud-init, docker.io and python3
(../shared/notes/e2e-boot.md: about 80 s and 560 MiB). The tree is cached under
``/var/cache/nodeagent-e2e/`` keyed by everything that shapes it, so CI on the same machine
builds it once; each test boots a throwaway overlay over it and never writes to it.

    python -m tests.e2e.rootfs        build (or find) it and print its path
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

from tests import packagingscripts

CACHE = Path(os.environ.get("NODEAGENT_E2E_CACHE", "/var/cache/nodeagent-e2e"))
SUITE = "bookworm"
PACKAGES = (
    "systemd",
    "systemd-sysv",
    "dbus",
    "python3",
    # without it debootstrap leaves python3-cryptography (cloud-init) unconfigured
    "python3-cffi-backend",
    "cloud-init",
    "docker.io",
    "iproute2",
    "busybox-static",
    "locales",
)
LAYOUT_VERSION = "1"  # bump when the post-debootstrap tweaks below change


def key() -> str:
    h = hashlib.sha256(f"{SUITE} {' '.join(PACKAGES)} {LAYOUT_VERSION}".encode())
    return h.hexdigest()[:12]


def why_not() -> Optional[str]:
    """Why the boot tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap, systemd-nspawn, mounts)"
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (debootstrap, systemd-container, util-linux)"
    return None


def build(cache: Path = CACHE) -> Path:
    """The cached pristine tree, built if absent (concurrent callers wait on a lock)."""
    debroot = packagingscripts.load("debroot")

    def fill(tmp: Path) -> str:
        start = time.monotonic()
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(PACKAGES)}",
                SUITE,
                str(tmp),
                debroot.mirror(),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _tweak(tmp)
        return f"built in {time.monotonic() - start:.0f} s"

    result: Path = debroot.cached_root(cache, f"rootfs-{SUITE}-{key()}", fill)
    return result


def _tweak(root: Path) -> None:
    # cloud-init's locale module fails without a generated locale
    gen = root / "etc/locale.gen"
    gen.write_text(gen.read_text().replace("# en_US.UTF-8 UTF-8", "en_US.UTF-8 UTF-8"))
    subprocess.run(["chroot", str(root), "locale-gen"], check=True, stdout=subprocess.DEVNULL)
    # docker.io's and containerd's units are enabled by their postinst already; the image must
    # not start anything that needs the network beyond loopback.
    (root / "etc/hostname").write_text("gpu-node-1\n")
    (root / "etc/machine-id").write_text("")  # a fresh machine id on every boot
    apt_clean = root / "var/cache/apt/archives"
    for deb in apt_clean.glob("*.deb"):
        deb.unlink()


if __name__ == "__main__":
    reason = why_not()
    if reason:
        print(f"cannot build: {reason}", file=sys.stderr)
        raise SystemExit(1)
    print(build())
