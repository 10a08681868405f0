"""Measuring whole commands: median wall time and peak RSS over repeated runs."""

from __future__ import annotations

import dataclasses
import os
import statistics
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"


@dataclasses.dataclass(frozen=True)
class Measurement:
    name: str
    command: str
    runs: int
    median_s: float
    min_s: float
    max_s: float
    peak_rss_mib: float
    target: str = ""
    ratio: float = 0.0  # median / the python floor's median, same run

    def row(self) -> str:
        return (
            f"| {self.name} | `{self.command}` | {self.runs} | {self.median_s * 1000:.1f} ms | "
            f"{self.ratio:.2f}x | {self.min_s * 1000:.1f}-{self.max_s * 1000:.1f} ms | "
            f"{self.peak_rss_mib:.1f} MiB | {self.target} |"
        )


HEADER = (
    "| what | command | runs | median | vs floor | min-max | peak RSS | target |\n"
    "|---|---|---|---|---|---|---|---|"
)


def measure(
    name: str,
    argv: Sequence[str],
    *,
    runs: int = 20,
    warmup: int = 2,
    env: Mapping[str, str] | None = None,
    shown: str | None = None,
    target: str = "",
    ok_codes: Sequence[int] = (0,),
) -> Measurement:
    """Run ``argv`` ``warmup + runs`` times; wall time and max RSS of each measured run.

    RSS comes from ``wait4`` on the child itself, so it is that process's peak, not the
    benchmark's.
    """
    # As installed (a DEB/RPM byte-compiles its modules): let the warm-up runs write .pyc
    # files even where the environment says not to (PYTHONDONTWRITEBYTECODE is set on CI).
    full_env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    full_env.update(env or {})
    times: list[float] = []
    rss: list[float] = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            list(argv), env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        _, status, usage = os.wait4(proc.pid, 0)
        elapsed = time.perf_counter() - t0
        code = os.waitstatus_to_exitcode(status)
        if code not in ok_codes:
            err = proc.stderr.read().decode() if proc.stderr else ""
            raise SystemExit(f"bench: {' '.join(argv)} exited {code}: {err.strip()}")
        if proc.stderr:
            proc.stderr.close()
        proc.returncode = code  # reaped by wait4 above
        if i >= warmup:
            times.append(elapsed)
            rss.append(usage.ru_maxrss / 1024)  # KiB on Linux
    return Measurement(
        name=name,
        command=shown or " ".join(argv),
        runs=runs,
        median_s=statistics.median(times),
        min_s=min(times),
        max_s=max(times),
        peak_rss_mib=max(rss),
        target=target,
    )


def write_section(name: str, text: str, intro: str = "", doc: Path = DOC) -> None:
    """Put ``text`` between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``doc``
    (docs/benchmarks.md); a section not there yet is appended after ``intro`` (its heading
    and what it measures)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    old = doc.read_text()
    if begin not in old:
        old += f"{intro}{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    _, tail = rest.split(end, 1)
    doc.write_text(f"{head}{begin}\n{text}{end}{tail}")
