"""Test-side crash injection: run the nodeagent CLI with file-system calls intercepted.

The product code has no test hooks. This wrapper patches ``os.replace``, ``os.unlink``,
``os.fsync`` and ``os.write`` in the child process only, counts the calls that match, and at
the chosen one kills the process (``SIGKILL``: nothing runs after it, as with a power cut
or the OOM killer) or pauses it until a marker file is removed (so a test can act while
the agent is mid-write)::

    python -m tests.crashpoint [--op replace] [--name daemon.json] [--nth 1]
        [--when before|after] [--action kill|pause|fail] [--errno NAME] [--marker FILE]
        [--trace FILE] -- --root DIR apply ...

``--action fail`` makes the chosen call raise ``OSError(--errno)`` instead (EIO, EDQUOT,
ENOSPC ... at exactly one step), which no real file system here can be made to do on cue.

``--trace FILE`` appends one line per intercepted call (``op path``) and changes nothing
else, so a test can first list every step of a write sequence, then crash at each.
``--name`` matches the basename of the path the call acts on (``*`` matches any; for
``fsync`` and ``write``, the file descriptor's path). The writer's temp file
``.NAME.nodeagent-tmp-PID-HEX`` counts as ``NAME``: the file it will replace.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable

OPS = ("replace", "unlink", "fsync", "write")
TEMP_MARK = ".nodeagent-tmp-"  # nodeagent.host.writer's temp-file mark


def _dest_name(path: str) -> str:
    """The file a path stands for: a writer temp file stands for the file it replaces."""
    name = Path(path).name
    if TEMP_MARK in name and name.startswith("."):
        return name[1:].rsplit(TEMP_MARK, 1)[0]
    return name


def _fd_path(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def main(argv: list[str]) -> int:
    if "--" not in argv:
        print("usage: python -m tests.crashpoint [options] -- NODEAGENT_ARGS", file=sys.stderr)
        return 2
    split = argv.index("--")
    p = argparse.ArgumentParser(prog="crashpoint")
    p.add_argument("--op", choices=OPS, default="replace")
    p.add_argument("--name", default="*")
    p.add_argument("--nth", type=int, default=0, help="0: never act (with --trace: list only)")
    p.add_argument("--when", choices=("before", "after"), default="before")
    p.add_argument("--action", choices=("kill", "pause", "fail"), default="kill")
    p.add_argument("--errno", default="EIO", help="for --action fail: EIO, ENOSPC, EDQUOT ...")
    p.add_argument("--marker", type=Path)
    p.add_argument("--trace", type=Path)
    opts = p.parse_args(argv[:split])
    count = 0
    real: dict[str, Callable[..., Any]] = {op: getattr(os, op) for op in OPS}
    trace = open(opts.trace, "a") if opts.trace else None  # noqa: SIM115 (lives as long as the process)

    def act(target: str) -> None:
        if opts.action == "fail":
            code = getattr(errno, opts.errno)
            raise OSError(code, os.strerror(code), target)
        if opts.action == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        assert opts.marker is not None, "--action pause needs --marker"
        opts.marker.write_text(str(os.getpid()))
        while opts.marker.exists():
            time.sleep(0.01)

    def wrap(op: str) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            nonlocal count
            target = (
                _fd_path(args[0])
                if op in ("fsync", "write")
                else os.fspath(args[-1 if op == "replace" else 0])
            )
            if op == "write" and "nodeagent-tmp" not in target:
                return real[op](*args, **kwargs)  # only the writer's temp files are of interest
            matches = opts.op == op and (opts.name == "*" or _dest_name(target) == opts.name)
            if trace is not None:
                trace.write(f"{op} {target}\n")
                trace.flush()
            if matches:
                count += 1
            hit = matches and count == opts.nth
            if hit and opts.when == "before":
                act(target)
            result = real[op](*args, **kwargs)
            if hit and opts.when == "after":
                act(target)
            return result

        return call

    for op in OPS:
        setattr(os, op, wrap(op))
    from nodeagent.cli.main import main as cli_main

    return cli_main(argv[split + 1 :])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
