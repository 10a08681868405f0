"""Build the simulated ``libnvidia-ml.so.1`` with gcc against NVIDIA's ``nvml.h``.

``nvml.h`` comes from the ``nvidia-nvml-dev`` wheel (a test dependency). Run as
``python -m tests.fakenvml.build OUT_DIR [--arch aarch64]``: prints the library's path.
``--arch aarch64`` cross-compiles with Debian's ``gcc-aarch64-linux-gnu`` (tests/test_arm64.py
loads that build inside an emulated arm64 root).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "fakenvml.c"
PROFILES = HERE / "profiles"
LIBNAME = "libnvidia-ml.so.1"
# The compiler for each target (uname -m), and its ELF e_machine (to tell builds apart).
COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


def nvml_header_dir() -> Path:
    """The include directory of the installed nvidia-nvml-dev wheel."""
    import nvidia  # namespace package from the nvidia-* wheels

    for base in nvidia.__path__:
        for header in sorted(Path(base).glob("*/include/nvml.h")):
            return header.parent
    raise RuntimeError("nvml.h not found: pip install nvidia-nvml-dev")


def _sources() -> list[Path]:
    return sorted([*HERE.glob("*.c"), *HERE.glob("*.h")])


def elf_machine(lib: Path) -> int:
    """The e_machine field of an ELF file (little-endian), or -1."""
    with open(lib, "rb") as f:
        head = f.read(20)
    if len(head) < 20 or head[:4] != b"\x7fELF":
        return -1
    return int.from_bytes(head[18:20], "little")


def build(out_dir: Path, default_profile: Optional[str] = None, arch: str = "x86_64") -> Path:
    """Compile into ``out_dir`` unless an up-to-date build is there; return the library.

    Up to date means newer than every ``.c``/``.h`` here, and built for ``arch`` (x86_64
    with the host's gcc, aarch64 with ``aarch64-linux-gnu-gcc``). The library is written to a
    temporary name and renamed, so concurrent builds (parallel test runs) never load a
    half-written file. ``default_profile``: the profile path used when
    ``FAKE_NVML_PROFILE`` is unset (for a booted machine, whose services do not inherit
    the test's environment); use a separate ``out_dir`` for such a build.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIBNAME
    newest = max(p.stat().st_mtime for p in _sources())
    if lib.exists() and lib.stat().st_mtime >= newest and elf_machine(lib) == ELF_MACHINES[arch]:
        return lib
    tmp = out_dir / f".{LIBNAME}.{os.getpid()}.tmp"
    # gcc's output goes to stderr: stdout carries only the path (``-m`` contract).
    subprocess.run(
        [
            COMPILERS[arch],
            "-shared",
            "-fPIC",
            "-O2",
            "-Wall",
            "-Wextra",
            "-Wno-deprecated-declarations",
            "-pthread",
            f"-I{nvml_header_dir()}",
            f"-Wl,-soname,{LIBNAME}",
            *([f'-DFAKE_NVML_DEFAULT_PROFILE="{default_profile}"'] if default_profile else []),
            "-o",
            str(tmp),
            str(SOURCE),
        ],
        check=True,
        stdout=sys.stderr,
    )
    tmp.replace(lib)
    return lib


def profile(name: str) -> Path:
    path = PROFILES / f"{name}.json"
    if not path.exists():
        raise FileNotFoundError(f"no simulated GPU profile {name!r} in {PROFILES}")
    return path


if __name__ == "__main__":
    args = sys.argv[1:]
    target = "x86_64"
    if len(args) == 3 and args[1] == "--arch" and args[2] in COMPILERS:
        target = args[2]
        args = args[:1]
    if len(args) != 1:
        raise SystemExit("usage: python -m tests.fakenvml.build OUT_DIR [--arch aarch64]")
    print(build(Path(args[0]), arch=target))
