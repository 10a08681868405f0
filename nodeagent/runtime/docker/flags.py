"""How dockerd is started, and whether its flags conflict with daemon.json.

dockerd refuses to start when an option is set both as a flag and in daemon.json
("the following directives are specified both as a flag and in the configuration file",
regardless of value), a known cause of "docker won't start after installing
nvidia-docker2" (NVIDIA/nvidia-docker#751, #1002). Before writing ``runtimes`` or
``default-runtime`` the agent looks wherever dockerd's flags come from: the unit's
``ExecStart`` and drop-ins, the environment files distributions use
(``/etc/sysconfig/docker``, ``/etc/default/docker``) and, on the live host, the running
process's command line. Parsing is pure; :func:`collect` does the reading, through the
host reader: every source is an optional fact, so one that is not a readable text file
(a directory, a FIFO, unreadable) counts as absent and never blocks or fails the run.
Reads only: never writes a file or signals a process.
"""

from __future__ import annotations

import dataclasses
import shlex
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

from nodeagent.errors import InputError
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import read_optional

UNIT_FILES = (
    "/lib/systemd/system/docker.service",
    "/usr/lib/systemd/system/docker.service",
    "/etc/systemd/system/docker.service",
)
DROP_IN_DIRS = (
    "/usr/lib/systemd/system/docker.service.d",
    "/etc/systemd/system/docker.service.d",
    "/run/systemd/system/docker.service.d",
)
ENV_FILES = ("/etc/sysconfig/docker", "/etc/default/docker")

# daemon.json key -> the flags that set the same thing
FLAG_FOR_KEY = {
    "runtimes": ("--add-runtime",),
    "default-runtime": ("--default-runtime",),
}


@dataclasses.dataclass(frozen=True)
class FlagSource:
    """Where dockerd gets flags from, and the words found there."""

    where: str  # "/etc/systemd/system/docker.service.d/override.conf", "pid 1234 cmdline"
    words: tuple[str, ...]


def exec_start_words(unit_texts: Sequence[tuple[str, str]]) -> Optional[FlagSource]:
    """The effective ``ExecStart`` of a unit and its drop-ins, in systemd's order.

    ``unit_texts`` is (name, text) in load order (unit file, then drop-ins sorted). An
    empty ``ExecStart=`` resets the list, as systemd does.
    """
    current: Optional[FlagSource] = None
    for name, text in unit_texts:
        for line in _logical_lines(text):
            key, sep, value = line.partition("=")
            if not sep or key.strip() != "ExecStart":
                continue
            value = value.strip()
            if not value:
                current = None
                continue
            try:
                words = tuple(shlex.split(value.lstrip("-@:+!")))
            except ValueError:
                words = tuple(value.split())
            current = FlagSource(where=name, words=words)
    return current


def _logical_lines(text: str) -> Iterable[str]:
    buf = ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and line.lstrip().startswith(("#", ";")):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield buf + line
        buf = ""
    if buf:
        yield buf


def env_file_words(name: str, text: str) -> FlagSource:
    """Every word of every assignment in an environment file (OPTIONS=, DOCKER_OPTS=,
    DOCKER_ADD_RUNTIMES= ...): any of them may end up on dockerd's command line."""
    words: list[str] = []
    for line in _logical_lines(text):
        key, sep, value = line.partition("=")
        if not sep or not key.strip().replace("export ", "").strip().isidentifier():
            continue
        try:
            words += shlex.split(value)
        except ValueError:
            words += value.split()
    return FlagSource(where=name, words=tuple(w for word in words for w in word.split()))


def conflicts(sources: Iterable[FlagSource], keys: Iterable[str]) -> list[str]:
    """One message per flag that would clash with the daemon.json ``keys``."""
    out: list[str] = []
    wanted = {flag: key for key in keys for flag in FLAG_FOR_KEY.get(key, ())}
    for src in sources:
        for word in src.words:
            flag = word.split("=", 1)[0]
            if flag in wanted:
                out.append(
                    f"{src.where}: dockerd is started with {flag} and daemon.json would set "
                    f"'{wanted[flag]}'; dockerd refuses to start with both. Remove the flag, "
                    "or set runtime.engine: none and manage docker's runtimes there."
                )
    return out


@dataclasses.dataclass(frozen=True)
class ConfigFileFlag:
    """dockerd's ``--config-file PATH``, and where it was found."""

    where: str
    path: str


def config_file_flag(sources: Iterable[FlagSource]) -> Optional[ConfigFileFlag]:
    """The ``--config-file`` dockerd is started with, if any."""
    for src in sources:
        words = list(src.words)
        for i, w in enumerate(words):
            if w.startswith("--config-file="):
                return ConfigFileFlag(src.where, w.split("=", 1)[1])
            if w == "--config-file" and i + 1 < len(words):
                return ConfigFileFlag(src.where, words[i + 1])
    return None


def collect(root: HostRoot) -> list[FlagSource]:
    """Read every place dockerd's flags come from (under ``root``)."""
    sources: list[FlagSource] = []
    units: list[tuple[str, str]] = []
    for host_path in UNIT_FILES:
        text = _read(root, host_path)
        if text is not None:
            units = [(host_path, text)]  # a later directory overrides an earlier one
    for d in DROP_IN_DIRS:
        directory = _local(root, d)
        if directory is not None and directory.is_dir():
            for name in sorted(f.name for f in directory.glob("*.conf")):
                text = _read(root, f"{d}/{name}")
                if text is not None:
                    units.append((f"{d}/{name}", text))
    start = exec_start_words(units)
    if start is not None:
        sources.append(start)
    for host_path in ENV_FILES:
        text = _read(root, host_path)
        if text is not None:
            sources.append(env_file_words(host_path, text))
    if root.is_real_host:
        sources += running_dockerd(Path("/proc"))
    return sources


def _local(root: HostRoot, host_path: str) -> Optional[Path]:
    """Where ``host_path`` is on this machine, symlinks followed inside the root; None
    when that cannot be worked out (a symlink loop, an unreadable link)."""
    try:
        return root.resolve(host_path)[0]
    except (InputError, OSError):
        return None


def _read(root: HostRoot, host_path: str) -> Optional[str]:
    local = _local(root, host_path)
    return None if local is None else read_optional(local)


def running_dockerd(proc: Path) -> list[FlagSource]:
    """The command line of every process named ``dockerd`` under ``proc``."""
    found = []
    try:
        entries = list(proc.iterdir())
    except OSError:
        return []
    for entry in entries:
        if not entry.name.isdigit():
            continue
        comm = read_optional(entry / "comm")
        if comm is None or comm.strip() != "dockerd":
            continue
        cmdline = read_optional(entry / "cmdline")
        if cmdline is None:
            continue
        words = tuple(a for a in cmdline.split("\0") if a)
        found.append(FlagSource(where=f"running dockerd (pid {entry.name})", words=words))
    return found
