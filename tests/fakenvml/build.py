"""Build the simulated ``libnvidia-ml.so.1`` with gcc against NVIDIA's ``nvml.h``.

``nvml.h`` comes from the ``nvidia-nvml-dev`` wheel (a test dependency). Run as
``python -m tests.fakenvml.build OUT_DIR``: prints the library's path.
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


def nvml_header_dir() -> Path:
    """The include directory of the installed nvidia-nvml-dev wheel."""
    import nvidia  # namespace package from the nvidia-* wheels

    for base in nvidia.__path__:
        for header in sorted(Path(base).glob("*/include/nvml.h")):
            return header.parent
    raise RuntimeError("nvml.h not found: pip install nvidia-nvml-dev")


def _sources() -> list[Path]:
    return sorted([*HERE.glob("*.c"), *HERE.glob("*.h")])


def build(out_dir: Path, default_profile: Optional[str] = None) -> Path:
    """Compile into ``out_dir`` unless an up-to-date build is there; return the library.

    Up to date means newer than every ``.c``/``.h`` here. The library is written to a
    temporary name and renamed, so concurrent builds (parallel test runs) never load a
    half-written file. ``default_profile``: the profile path used when
    ``FAKE_NVML_PROFILE`` is unset (for a booted machine, whose services do not inherit
    the test's environment); use a separate ``out_dir`` for such a build.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    lib = out_dir / LIBNAME
    newest = max(p.stat().st_mtime for p in _sources())
    if lib.exists() and lib.stat().st_mtime >= newest:
        return lib
    tmp = out_dir / f".{LIBNAME}.{os.getpid()}.tmp"
    # gcc's output goes to stderr: stdout carries only the path (``-m`` contract).
    subprocess.run(
        [
            "gcc",
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
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m tests.fakenvml.build OUT_DIR")
    print(build(Path(sys.argv[1])))
