"""Benchmarks: `python -m bench [--runs N] [--write]`.

Prints a Markdown table of median wall time and peak RSS of the agent's commands on this
machine; `--write` also replaces the generated section of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import sys
import tempfile
import time
from pathlib import Path

from bench.common import HEADER, Measurement, measure, write_section

REPO = Path(__file__).resolve().parents[1]


def run_cli(runs: int) -> list[Measurement]:
    from tests.fakenvml.build import build

    exe = str(REPO / ".venv" / "bin" / "nodeagent")
    if not Path(exe).exists():
        exe = "nodeagent"
    out: list[Measurement] = []
    out.append(measure("python floor", [sys.executable, "-c", "pass"], runs=runs))
    out.append(measure("--version", [exe, "--version"], runs=runs, target="≤ 100 ms"))
    with tempfile.TemporaryDirectory() as tmp:
        lib = build(Path(tmp) / "lib")
        profile = REPO / "tests" / "fakenvml" / "profiles" / "h100x8.json"
        env = {"FAKE_NVML_PROFILE": str(profile), "LD_LIBRARY_PATH": str(lib.parent)}
        root = Path(tmp) / "root"
        root.mkdir()
        for fmt in ("table", "json"):
            out.append(
                measure(
                    f"detect -o {fmt} (8x H100, simulated NVML)",
                    [exe, "--root", str(root), "detect", "-o", fmt],
                    runs=runs,
                    env=env,
                    shown=f"nodeagent detect -o {fmt}",
                    target="≤ 300 ms",
                )
            )
        out.append(measure_dry_run(exe, Path(tmp), runs))
    floor = out[0].median_s
    return [dataclasses.replace(m, ratio=m.median_s / floor) for m in out]


# A typical hand-edited daemon.json (what operators' wiki pages produce).
TYPICAL_DAEMON_JSON = """{
  "insecure-registries": ["10.0.0.5:5000", "registry.local:5000"],
  "registry-mirrors": ["https://mirror.example.com"],
  "log-driver": "json-file",
  "log-opts": {"max-size": "100m", "max-file": "3"},
  "storage-driver": "overlay2",
  "live-restore": true,
  "exec-opts": ["native.cgroupdriver=systemd"]
}
"""


def measure_dry_run(exe: str, tmp: Path, runs: int) -> Measurement:
    root = tmp / "dry-run-root"
    (root / "etc" / "docker").mkdir(parents=True)
    (root / "etc" / "docker" / "daemon.json").write_text(TYPICAL_DAEMON_JSON)
    binary = root / "usr" / "bin" / "nvidia-container-runtime"
    binary.parent.mkdir(parents=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    return measure(
        "runtime configure --dry-run (docker, typical daemon.json)",
        [exe, "--root", str(root), "runtime", "configure", "--runtime", "docker", "--dry-run"],
        runs=runs,
        shown="nodeagent runtime configure --dry-run",
        target="≤ 2.5x floor",
    )


def render(results: list[Measurement]) -> str:
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    cpu = platform.processor() or platform.machine()
    lines = [
        f"Measured {when} on {platform.node()} ({cpu}, Python {platform.python_version()}), "
        "by `.venv/bin/python -m bench --write`.",
        "",
        HEADER,
        *(m.row() for m in results),
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = p.parse_args()
    text = render(run_cli(args.runs))
    sys.stdout.write(text)
    if args.write:
        write_section("bench", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
