"""``python -m bench.kubeapi_serve WORKDIR``: the test API server (tests/kubeapi/) in a process
of its own, so the fleet bench can read its CPU and memory apart from the agents'.

It prints its URL on one line once it serves. Each ``dump PATH`` line on stdin writes the
request log so far to PATH (JSON lines: ts, method, path, query, status, user) and answers
``dumped``; the end of stdin stops the server. Writes only under WORKDIR and to PATH.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tests.kubeapi import KubeAPIServer


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        sys.stderr.write("usage: python -m bench.kubeapi_serve WORKDIR\n")
        return 2
    srv = KubeAPIServer(Path(argv[0])).start()
    try:
        print(srv.url, flush=True)
        for line in sys.stdin:  # the parent's commands; EOF: it is done with us
            cmd, _, arg = line.strip().partition(" ")
            if cmd != "dump":
                continue
            with Path(arg).open("w") as out:
                for r in srv.requests:
                    row = {"ts": r.ts, "method": r.method, "path": r.path, "query": r.query,
                           "status": r.status, "user": r.user or ""}  # fmt: skip
                    out.write(json.dumps(row) + "\n")
            print("dumped", flush=True)
    finally:
        srv.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
