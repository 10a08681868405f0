"""API benchmarks against the test API server on loopback (`python -m bench.kube`).

* requests per node for a full report (wait for the Node, labels, condition, event);
* time from the Node appearing to its condition True and labels set, the agent already
  waiting on its watch (median of repeated runs);
* a fleet: N agents (threads, each with its own node certificate) waiting for their Nodes,
  which appear at once; all must converge; peak write rate over 1 s windows; requests per
  node.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Optional

from bench.common import write_section
from nodeagent.config import KubeConfig
from nodeagent.kube.client import NodeAPI
from nodeagent.kube.node import ConditionStatus
from nodeagent.kube.readiness import Readiness
from nodeagent.kube.report import Report
from tests.kubeapi import KubeAPIServer

LABELS = {"gpu": "true", "gpu-type": "H100", "nvidia.com/gpu.count": "8"}
WRITES = ("POST", "PUT", "PATCH", "DELETE")
CONDITION_TYPE = KubeConfig().condition_type


def _ready(capacity: Optional[Mapping[str, str]]) -> Readiness:
    return Readiness(ConditionStatus.TRUE, "GPUReady", "8 GPUs healthy, runtime ready")


REPORT = Report(labels=LABELS, readiness=_ready, condition_type=CONDITION_TYPE, host="bench")


def _agent(api: NodeAPI, done: dict[str, float], errors: list[str]) -> None:
    try:
        node = api.wait_for_node(120)
        REPORT.apply(api, node)
        done[api.node_name] = time.monotonic()
    except Exception as e:  # a bench records failures, it does not hide them
        errors.append(f"{api.node_name}: {e}")


def _converged(srv: KubeAPIServer, name: str) -> bool:
    node = srv.get_node(name) or {}
    labels = (node.get("metadata") or {}).get("labels") or {}
    conds = (node.get("status") or {}).get("conditions") or []
    ok = any(c.get("type") == CONDITION_TYPE and c.get("status") == "True" for c in conds)
    return ok and all(labels.get(k) == v for k, v in LABELS.items())


def fleet(srv: KubeAPIServer, tmp: Path, n: int, prefix: str) -> dict[str, Any]:
    """n agents waiting; their Nodes appear together; measure until all converge."""
    apis = [
        NodeAPI(srv.node_kubeconfig(tmp / f"{prefix}{i}.kc", f"{prefix}{i}"), f"{prefix}{i}")
        for i in range(n)
    ]
    done: dict[str, float] = {}
    errors: list[str] = []
    threads = [threading.Thread(target=_agent, args=(a, done, errors), daemon=True) for a in apis]
    for t in threads:
        t.start()
    time.sleep(0.5 + n * 0.005)  # every agent is on its watch
    srv.clear_requests()
    t0 = time.monotonic()
    for a in apis:
        srv.create_node(a.node_name, capacity={"cpu": "96", "nvidia.com/gpu": "8"})
    for t in threads:
        t.join(180)
    elapsed = time.monotonic() - t0
    reqs = [r for r in srv.requests if r.user and r.user.startswith(f"system:node:{prefix}")]
    writes = [r for r in reqs if r.method in WRITES]
    per_second = collections.Counter(int(r.ts - reqs[0].ts) for r in writes) if writes else {}
    converged = sum(_converged(srv, a.node_name) for a in apis)
    for a in apis:
        a.close()
    return {
        "n": n,
        "converged": converged,
        "errors": errors,
        "latencies": sorted(done[a.node_name] - t0 for a in apis if a.node_name in done),
        "elapsed_s": elapsed,
        "writes_per_node": len(writes) / n,
        # the watch opened before the clock started counts as the one read per node
        "reads_per_node": (len(reqs) - len(writes)) / n + 1,
        "peak_writes_per_s": max(per_second.values()) if per_second else 0,
        "retries": sum(1 for r in reqs if r.status >= 429),
    }


def run(runs: int, fleet_size: int) -> str:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        srv = KubeAPIServer(tmp / "api")
        srv.start()
        try:
            singles = [fleet(srv, tmp, 1, f"single{i}-") for i in range(runs)]
            big = fleet(srv, tmp, fleet_size, "fleet-")
        finally:
            srv.stop()
    lat = [s["latencies"][0] for s in singles if s["latencies"]]
    one = singles[-1]
    fl = big["latencies"]
    rows = [
        "| what | measured | target |",
        "|---|---|---|",
        f"| requests per node, full report (1 agent) | {one['writes_per_node']:.0f} writes, "
        f"{one['reads_per_node']:.0f} reads | ≤ 4 writes, ≤ 3 reads |",
        f"| Node appears → condition True + labels (agent waiting), median of {len(lat)} | "
        f"{statistics.median(lat) * 1000:.0f} ms (min {min(lat) * 1000:.0f}, max "
        f"{max(lat) * 1000:.0f}) | ≤ 1 s |",
        f"| fleet of {big['n']}: converged | {big['converged']}/{big['n']} "
        f"({len(big['errors'])} errors) | all |",
        f"| fleet of {big['n']}: time to converge, median / p99 / last | "
        f"{statistics.median(fl):.2f} / {fl[int(len(fl) * 0.99) - 1]:.2f} / {fl[-1]:.2f} s | |"
        if fl
        else f"| fleet of {big['n']}: time to converge | none converged | |",
        f"| fleet of {big['n']}: peak write rate | {big['peak_writes_per_s']} writes/s | |",
        f"| fleet of {big['n']}: requests per node | {big['writes_per_node']:.2f} writes, "
        f"{big['reads_per_node']:.2f} reads | ≤ 4, ≤ 3 |",
    ]
    if big["errors"]:
        rows.append("")
        rows.append(f"First error: `{big['errors'][0]}`")
    return "\n".join(rows) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kube")
    p.add_argument("--runs", type=int, default=20)
    p.add_argument("--fleet", type=int, default=200)
    p.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = p.parse_args()
    from nodeagent import log

    log.configure("json", 0)  # warnings only: the table is the output
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    text = f"Measured {when} by `.venv/bin/python -m bench.kube --write`.\n\n"
    text += run(args.runs, args.fleet)
    sys.stdout.write(text)
    if args.write:
        write_section(
            "kube",
            text,
            "\n## The API side, against the test API server on loopback\n\n"
            "The agent's report phase (wait for the Node on a watch, then labels, condition, "
            "event) with real HTTPS and node client certificates. A fleet runs N agents as "
            "threads of one process, each with its own certificate, their Nodes created "
            "together.\n\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
