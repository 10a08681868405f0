"""A stand-in ``nvidia-ctk``: ``cdi generate`` writes a CDI spec of the simulated GPUs.

It asks the real pynvml over the simulated ``libnvidia-ml.so.1`` (tests/fakenvml) what the
real ``nvidia-ctk cdi generate`` asks NVML — the driver version and, per GPU, its index,
UUID and minor number — and prints a spec of kind ``nvidia.com/gpu`` shaped like the real
one's (NVIDIA Container Toolkit, "Support for Container Device Interface"): a device per
GPU named by each ``--device-name-strategy`` (``index``: ``0``; ``uuid``: ``GPU-…``;
``type-index``: ``gpu0``), each with its ``/dev/nvidiaN`` node, an ``all`` device, and
spec-wide edits with the control device nodes and a mount of ``libcuda.so.<driver>``.
Without ``--output`` it prints to stdout, as the real one does. It writes what NVML says;
it never checks that the files exist (the agent judges that). ``NVIDIA_CTK_DRIVER_ROOT``
plays the real tool's ``--driver-root``/``--dev-root``: host paths (``hostPath``) start
with it, container paths do not.

:func:`install` puts it at ``ROOT/usr/bin/nvidia-ctk`` (a shell wrapper that runs this file
with this Python and the simulated library), where the agent finds it.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import sys
from pathlib import Path
from typing import Any

LIBDIR = "/usr/lib/x86_64-linux-gnu"
CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def driver_files(version: str) -> tuple[str, ...]:
    """The driver files the spec mounts (host paths), for ``version``."""
    return (f"{LIBDIR}/libcuda.so.{version}", f"{LIBDIR}/libnvidia-ml.so.{version}")


def gpu_nodes(minor: int) -> tuple[str, ...]:
    return (f"/dev/nvidia{minor}",)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def spec(strategies: list[str]) -> dict[str, Any]:
    import pynvml

    host = os.environ.get("NVIDIA_CTK_DRIVER_ROOT", "").rstrip("/")

    def node(path: str) -> dict[str, str]:
        return {"path": path, "hostPath": host + path} if host else {"path": path}

    library = os.environ.get("NVIDIA_CTK_NVML_LIBRARY")
    if library:
        import ctypes

        pynvml.nvmlLib = ctypes.CDLL(library)
    pynvml.nvmlInit()
    try:
        version = _text(pynvml.nvmlSystemGetDriverVersion())
        devices: list[dict[str, Any]] = []
        all_nodes: list[dict[str, str]] = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            uuid = _text(pynvml.nvmlDeviceGetUUID(h))
            minor = pynvml.nvmlDeviceGetMinorNumber(h)
            all_nodes.extend(node(p) for p in gpu_nodes(minor))
            names = {"index": str(i), "uuid": uuid, "type-index": f"gpu{i}"}
            for s in strategies:
                nodes = [node(p) for p in gpu_nodes(minor)]
                devices.append({"name": names[s], "containerEdits": {"deviceNodes": nodes}})
    finally:
        pynvml.nvmlShutdown()
    devices.append({"name": "all", "containerEdits": {"deviceNodes": all_nodes}})
    return {
        "cdiVersion": "0.5.0",
        "kind": "nvidia.com/gpu",
        "devices": devices,
        "containerEdits": {
            "env": ["NVIDIA_VISIBLE_DEVICES=void"],
            "deviceNodes": [node(p) for p in CONTROL_NODES],
            "mounts": [
                {
                    "hostPath": host + f,
                    "containerPath": f,
                    "options": ["ro", "nosuid", "nodev", "bind"],
                }
                for f in driver_files(version)
            ],
        },
    }


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nvidia-ctk")
    sub = parser.add_subparsers(dest="group", required=True)
    cdi = sub.add_parser("cdi").add_subparsers(dest="command", required=True)
    gen = cdi.add_parser("generate")
    gen.add_argument("--output", default="")
    gen.add_argument("--format", choices=("yaml", "json"), default="")
    gen.add_argument(
        "--device-name-strategy", action="append", choices=("index", "uuid", "type-index")
    )
    args = parser.parse_args(argv)
    try:
        doc = spec(args.device_name_strategy or ["index"])
    except Exception as e:  # as the real tool: one line, exit 1
        print(f"ERROR: failed to generate CDI spec: {e}", file=sys.stderr)
        return 1
    fmt = args.format or ("json" if args.output.endswith(".json") else "yaml")
    if fmt == "json":
        text = json.dumps(doc, indent=2) + "\n"
    else:
        import yaml

        text = "---\n" + yaml.safe_dump(doc, sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
    else:
        sys.stdout.write(text)
    return 0


def install(root: Path, lib: Path, driver_root: str = "") -> Path:
    """``ROOT/usr/bin/nvidia-ctk``: this stand-in, asking the simulated ``lib``."""
    path = root / "usr" / "bin" / "nvidia-ctk"
    path.parent.mkdir(parents=True, exist_ok=True)
    env = f"NVIDIA_CTK_DRIVER_ROOT={driver_root} " if driver_root else ""
    path.write_text(
        "#!/bin/sh\n"
        f"{env}NVIDIA_CTK_NVML_LIBRARY={lib} exec {sys.executable} {Path(__file__).resolve()} "
        '"$@"\n'
    )
    path.chmod(0o755)
    return path


def install_driver(root: Path, version: str, minors: list[int], devices: bool = False) -> None:
    """The files a driver of ``version`` puts on the host, under ``root``: the device nodes
    (empty files, where only their existence is judged; with ``devices``, character devices
    1:3 — /dev/null's — that a runtime can really bind) and the mounted libraries."""
    for p in (*CONTROL_NODES, *(n for m in minors for n in gpu_nodes(m))):
        f = root / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        if devices and not f.exists():
            os.mknod(f, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        else:
            f.touch()
    for p in driver_files(version):
        f = root / p.lstrip("/")
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(f"a driver library of {version}\n")


def remove_driver(root: Path, version: str) -> None:
    """An upgrade took ``version``'s libraries away."""
    for p in driver_files(version):
        (root / p.lstrip("/")).unlink(missing_ok=True)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
