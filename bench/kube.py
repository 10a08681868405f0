"""The agent's API side against both API servers, side by side
(`python -m bench.kube [--server real|test|both] [--fleet N] [--write]`):

* ``real``: kube-apiserver 1.20.2 and etcd 3.4 (tests/cluster/: Node,RBAC, NodeRestriction,
  an audit log), built once and cached;
* ``test``: the test API server (tests/kubeapi/), in a process of its own.

On each (bench/fleet.py does the work, bench/fleetservers.py holds the servers):

* one agent, repeatedly: requests per node for a full report, and the time from its Node's
  registration to the condition True and the labels set, the agent already waiting;
* a fleet of N agents (threads, each with its own node certificate, bench/fleetpki.py): the
  Nodes registered as kubelets do, each with its own credential and the startup taint; time
  to converge per node (median, p99), peak writes per 1 s window from the server's own log,
  the server's CPU and memory, then a steady state on the daemon's schedule with the clock
  divided (``--scale``) and the writes per node per hour.

The machine is shared: its load and the CPU the rest of it used are in the table too.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from bench import procstat
from bench.common import write_section
from bench.fleet import FleetResult, Steady, Usage, run_fleet, say
from bench.fleetservers import Server, kubeapi_server, real_server
from tests.cluster.build import BuildError
from tests.kubeapi.certs import PKI

LEGACY_SAMPLE = 20  # identities made the one-at-a-time way (tests/kubeapi/certs.py), to compare
IDLE_S = 5.0
SHORT = {"kube-apiserver": "apiserver", "etcd": "etcd", "kubeapi": "server"}


@dataclasses.dataclass(frozen=True)
class ServerRun:
    """Everything measured on one server."""

    name: str
    singles: tuple[FleetResult, ...]
    fleet: FleetResult


@contextmanager
def open_server(kind: str, workdir: Path) -> Iterator[Server]:
    if kind == "real":
        with real_server(workdir) as real:
            yield real
    else:
        with kubeapi_server(workdir) as test:
            yield test


def measure_server(kind: str, workdir: Path, runs: int, n: int, steady: Steady) -> ServerRun:
    with open_server(kind, workdir / "server") as srv:
        say(f"{srv.name}: up at {srv.url}; {runs} single agents")
        singles = tuple(
            run_fleet(srv, workdir / f"single{i}", 1, None, prefix=f"single{i}-", settle_s=0.2)
            for i in range(runs)
        )
        fleet = run_fleet(srv, workdir / "fleet", n, steady, idle_s=IDLE_S)
        return ServerRun(srv.name, singles, fleet)


def legacy_identity_s(workdir: Path, k: int = LEGACY_SAMPLE) -> float:
    """Seconds per node identity made as tests/kubeapi/certs.py makes them (a key and CSR,
    then a signature: two openssl processes, one identity at a time)."""
    pki = PKI(workdir / "legacy-pki")
    start = time.monotonic()
    for i in range(k):
        pki.client_cert(f"system:node:legacy-{i}", ("system:nodes",))
    return (time.monotonic() - start) / k


# --- rendering -----------------------------------------------------------------------------


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms"


def _parts(usage: Usage, fmt: Callable[[float], str], value: Callable[[str], float]) -> str:
    if len(usage.parts) == 1:
        return fmt(value(next(iter(usage.parts))))
    return " + ".join(f"{SHORT.get(k, k)} {fmt(value(k))}" for k in sorted(usage.parts))


def cpu(usage: Usage) -> str:
    """Average share of one core over the phase, by part when there are several."""
    if not usage.seconds:
        return "not measured"
    share = f"{100 * usage.server_cpu_s / usage.seconds:.0f}% of a core"
    spent = (
        f"{usage.server_cpu_s:.1f} CPU-s in {usage.seconds:.{0 if usage.seconds >= 10 else 1}f} s"
    )
    if len(usage.parts) == 1:
        return f"{share} ({spent})"
    each = _parts(usage, lambda v: f"{100 * v / usage.seconds:.0f}%",
                  lambda k: usage.parts[k].cpu_s)  # fmt: skip
    return f"{share} ({each}; {spent})"


def rss(usage: Usage) -> str:
    total = sum(p.rss_mib for p in usage.parts.values())
    if len(usage.parts) == 1:
        return f"{total:.0f} MiB"
    return (
        f"{total:.0f} MiB ({_parts(usage, lambda v: f'{v:.0f}', lambda k: usage.parts[k].rss_mib)})"
    )


Row = tuple[str, Callable[[ServerRun], str], str]


def rows(n: int, runs: int, steady: Steady) -> list[Row]:
    def single_lat(s: ServerRun) -> str:
        lat = sorted(r.latencies[0] for r in s.singles if r.latencies)
        if not lat:
            return "none converged"
        return f"{_ms(statistics.median(lat))} (min {lat[0] * 1000:.0f}, max {lat[-1] * 1000:.0f})"

    def one_requests(s: ServerRun) -> str:
        r = s.singles[-1]
        return f"{r.report_writes_per_node:.0f} writes, {r.report_reads_per_node:.0f} reads"

    def converged(s: ServerRun) -> str:
        f = s.fleet
        return (f"{f.converged}/{f.n} ({len(f.errors)} errors, {len(f.refused)} 403s, "
                f"{f.retried} 429s/5xx)")  # fmt: skip

    def spread(s: ServerRun) -> str:
        f = s.fleet
        if not f.latencies:
            return "none converged"
        return f"{f.median:.2f} / {f.pct(0.99):.2f} / {f.latencies[-1]:.2f} s"

    def steady_writes(s: ServerRun) -> str:
        f = s.fleet
        return (f"{f.steady_writes_per_node_hour:.2f} writes, "
                f"{f.steady_reads_per_node_hour:.1f} reads")  # fmt: skip

    def per_request(s: ServerRun) -> str:
        f = s.fleet
        if not f.steady_requests or not f.idle.seconds:
            return "not measured"
        idle_rate = f.idle.server_cpu_s / f.idle.seconds
        spent = f.steady.server_cpu_s - idle_rate * f.steady.seconds
        return f"{spent / f.steady_requests * 1000:.2f} ms ({f.steady_requests} requests)"

    def agents_cpu(s: ServerRun) -> str:
        f = s.fleet
        return " / ".join(
            f"{100 * u.agents_cpu_s / u.seconds:.0f}%" if u.seconds else "-"
            for u in (f.converge, f.steady)
        )

    def machine(s: ServerRun) -> str:
        f = s.fleet
        return (f"load {f.load_before:.1f} before; other work {f.converge.others_cores:.1f} / "
                f"{f.steady.others_cores:.1f} cores busy")  # fmt: skip

    fleet = f"fleet of {n}"
    hours = f"{steady.hours:g} h simulated, clock ÷{steady.scale:g}"
    return [
        ("requests per node, full report (1 agent)", one_requests, "≤ 4 writes, ≤ 3 reads"),
        (f"Node registered → condition True + labels (1 agent waiting), median of {runs}",
         single_lat, "≤ 1 s"),
        (f"{fleet}: node identities (own P-256 key, certificate, kubeconfig each)",
         lambda s: f"{s.fleet.identities_s:.2f} s ({s.fleet.identity_workers} openssl at a time)",
         ""),
        (f"{fleet}: Nodes registered (16 kubelets at a time, each its node's credential)",
         lambda s: f"{s.fleet.registered_s:.2f} s", ""),
        (f"{fleet}: converged", converged, "all, no 403"),
        (f"{fleet}: time to converge per node (registered → reported), median / p99 / max",
         spread, ""),
        (f"{fleet}: first registration → last report",
         lambda s: f"{s.fleet.all_converged_s:.2f} s", ""),
        (f"{fleet}: requests per node while converging",
         lambda s: f"{s.fleet.report_writes_per_node:.2f} writes, "
                   f"{s.fleet.report_reads_per_node:.2f} reads", "≤ 4, ≤ 3"),
        (f"{fleet}: peak writes/s, 1 s windows: the agents' (all, with the registrations)",
         lambda s: f"{s.fleet.peak_agent_writes_per_s} ({s.fleet.peak_writes_per_s})", ""),
        (f"server idle, before the fleet ({IDLE_S:g} s): CPU; RSS",
         lambda s: f"{cpu(s.fleet.idle)}; {rss(s.fleet.idle)}", ""),
        (f"{fleet}: server CPU while converging", lambda s: cpu(s.fleet.converge), ""),
        (f"{fleet}: server RSS after converging", lambda s: rss(s.fleet.converge), ""),
        (f"{fleet}: steady state ({hours}): per node per hour",
         steady_writes, "≤ 2 writes"),
        (f"{fleet}: server CPU in steady state", lambda s: cpu(s.fleet.steady), ""),
        (f"{fleet}: server CPU per request in steady state (the idle rate subtracted)",
         per_request, ""),
        (f"{fleet}: server RSS at the end / peak",
         lambda s: f"{rss(s.fleet.steady)} / "
                   f"{sum(s.fleet.peak_rss.values()):.0f} MiB", ""),
        (f"{fleet}: the agents' process CPU, converging / steady (one Python process)",
         agents_cpu, ""),
        ("the machine (shared): load average, cores busy with other work converging / steady",
         machine, ""),
    ]  # fmt: skip


def render(runs_by_server: Sequence[ServerRun], n: int, runs: int, steady: Steady,
           legacy_s: float) -> str:  # fmt: skip
    head = "| what | " + " | ".join(s.name for s in runs_by_server) + " | target |"
    out = [head, "|---" * (len(runs_by_server) + 2) + "|"]
    for what, fn, target in rows(n, runs, steady):
        out.append(f"| {what} | " + " | ".join(fn(s) for s in runs_by_server) + f" | {target} |")
    text = "\n".join(out) + "\n"
    fastest = min(s.fleet.identities_s for s in runs_by_server)
    text += (
        f"\nNode identities: made one at a time as tests/kubeapi/certs.py does (key and CSR, "
        f"then the CA's signature: two openssl processes) they take {legacy_s * 1000:.0f} ms "
        f"each here, {legacy_s * n:.1f} s for {n}; bench/fleetpki.py makes each in one "
        f"`openssl req -x509 -newkey ec -CA` process, one per core at a time: "
        f"{fastest:.2f} s for {n}, every node with its own key (the same work in each column: "
        f"the spread is this shared machine's load at the time).\n"
    )
    for s in runs_by_server:
        f = s.fleet
        if f.steady_requests and f.steady.seconds and f.idle.seconds and f.steady_scale:
            rate = f.steady_requests / f.steady.seconds / f.steady_scale
            idle_rate = f.idle.server_cpu_s / f.idle.seconds
            per = (f.steady.server_cpu_s - idle_rate * f.steady.seconds) / f.steady_requests
            text += (
                f"\n{s.name}: at the daemon's own intervals (the clock not divided) the {f.n} "
                f"agents send {rate:.2f} requests/s in steady state, about "
                f"{100 * max(0.0, per) * rate:.2f}% of a core on top of the idle server.\n"
            )
    for s in runs_by_server:
        problems = list(s.fleet.errors[:1]) + list(s.fleet.refused[:1])
        for p in problems:
            text += f"\n{s.name}: first problem: `{p}`\n"
    return text


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.kube")
    p.add_argument("--server", choices=("real", "test", "both"), default="both")
    p.add_argument("--runs", type=int, default=20, help="single-agent runs per server")
    p.add_argument("--fleet", type=int, default=500)
    p.add_argument(
        "--scale",
        type=float,
        default=60.0,
        help="the steady state's clock: every daemon interval divided by this",
    )
    p.add_argument("--hours", type=float, default=3.0, help="simulated hours of steady state")
    p.add_argument("--write", action="store_true", help="update docs/benchmarks.md")
    args = p.parse_args()  # fmt: skip
    from nodeagent import log

    log.configure("json", 0)  # warnings only: the table is the output
    kinds = ("test", "real") if args.server == "both" else (args.server,)
    steady = Steady(args.scale, args.hours)
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-kube.") as d:
        tmp = Path(d)
        legacy = legacy_identity_s(tmp)
        for kind in kinds:
            try:
                results.append(measure_server(kind, tmp / kind, args.runs, args.fleet, steady))
            except BuildError as e:
                raise SystemExit(f"bench.kube: the real API server: {e}") from None
    given = [
        f"--{k} {v:g}" if isinstance(v, float) else f"--{k} {v}"
        for k, v in vars(args).items()
        if k != "write" and v != p.get_default(k)
    ]
    cmd = " ".join(["python -m bench.kube", *given, "--write"])
    text = (
        f"Measured {when} by `.venv/bin/{cmd}` on {procstat.cores()} shared cores "
        f"(the agents and the server on the same machine).\n\n"
    )
    text += render(results, args.fleet, args.runs, steady, legacy)
    sys.stdout.write(text)
    if args.write:
        write_section(
            "kube",
            text,
            "\n## The API side: the test API server and a real kube-apiserver, side by side\n\n",
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
