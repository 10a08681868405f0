"""What a process and the machine used, read from /proc: CPU seconds (utime + stime of
``/proc/PID/stat``), resident memory now and at its peak (``VmRSS``, ``VmHWM`` of
``/proc/PID/status``), the machine's busy CPU seconds (``/proc/stat``) and load average.

Only reads /proc; a process that has gone reads as zeros (the caller says which ones ran).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


@dataclasses.dataclass(frozen=True)
class ProcSample:
    """One process at one moment."""

    cpu_s: float  # user + system CPU seconds since it started
    rss_mib: float
    peak_rss_mib: float

    def __sub__(self, earlier: ProcSample) -> ProcSample:
        """CPU used between ``earlier`` and this sample; the memory of this one."""
        return ProcSample(self.cpu_s - earlier.cpu_s, self.rss_mib, self.peak_rss_mib)


ZERO = ProcSample(0.0, 0.0, 0.0)


def sample(pid: int) -> ProcSample:
    """Process ``pid`` now (zeros when it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return ZERO
    # the fields after the command name (which may hold spaces) in parentheses
    fields = stat.rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK  # utime, stime: fields 14 and 15
    mem = {}
    for line in status.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            mem[key] = int(value.split()[0]) / 1024  # kB
    return ProcSample(cpu, mem.get("VmRSS", 0.0), mem.get("VmHWM", 0.0))


def machine_busy_s() -> float:
    """CPU seconds all cores spent not idle since boot (idle and iowait excluded)."""
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    ticks = [int(v) for v in first[1:]]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    guest = sum(ticks[8:10])  # guest time is also counted in user time
    return (sum(ticks) - idle - guest) / TICK


def loadavg() -> float:
    """The one-minute load average."""
    return float(Path("/proc/loadavg").read_text().split()[0])


def cores() -> int:
    return os.cpu_count() or 1
