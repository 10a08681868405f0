"""A fleet of node agents against one API server (bench/fleetservers.py), from registration to
steady state, and what it cost the server.

Each agent is a thread of this process with its own node certificate (bench/fleetpki.py) and
its own client, doing what ``nodeagent run`` does on the API side: read its Node (not there
yet: 404), wait for it on a watch, report (labels, ``GPUReady``, an Event), then heartbeat on
the daemon's own schedule (:class:`~nodeagent.daemon.schedule.ReportSchedule`: jittered
intervals, the first spread over a whole interval) with every interval divided by
``Steady.scale``: each heartbeat reads the Node and rewrites the condition only when its
``lastHeartbeatTime`` is older than ``condition_refresh_s``. The Nodes are registered as
kubelets do, each with its own node credential, the startup taint and GPU capacity, by a few
"kubelet" threads at once, once every agent waits.

Measured: per node, registration sent → its report done (median, p99, max); writes per 1 s
window from the server's own log; the server's CPU (``/proc/PID/stat``) and memory per phase;
the steady state's writes and reads per node per simulated hour; 403s and other refusals; how
busy the rest of the machine was.

Thread ownership: an agent's thread owns its :class:`~nodeagent.kube.client.NodeAPI` and
writes only its own :class:`FleetAgent` fields; a registrar thread writes only the
``registered_at`` of the Nodes it registers; the main thread reads them after the
:class:`Count` it waits on says they are done (or its bound passed). This module may not
touch the machine outside its workdir; it starts only threads.
"""

from __future__ import annotations

import dataclasses
import http.client
import json
import resource
import ssl
import statistics
import sys
import threading
import time
from collections import Counter as Tally
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Optional

from bench import procstat
from bench.fleetpki import Credential, mint, mint_nodes, node_user
from bench.fleetservers import Logged, Server
from nodeagent.config import DaemonConfig, KubeConfig
from nodeagent.daemon.reporter import heartbeat_age_s
from nodeagent.daemon.schedule import ReportSchedule
from nodeagent.errors import describe
from nodeagent.kube.client import NodeAPI
from nodeagent.kube.node import ConditionStatus
from nodeagent.kube.readiness import Readiness
from nodeagent.kube.report import Report

LABELS = {"gpu": "true", "gpu-type": "H100", "nvidia.com/gpu.count": "8"}
CONDITION_TYPE = KubeConfig().condition_type
STARTUP_TAINT = KubeConfig().startup_taint_key
CAPACITY = {"cpu": "96", "memory": "2Ti", "pods": "110", "nvidia.com/gpu": "8"}
#: What an agent may write: its labels, its condition, an Event.
AGENT_WRITES = frozenset({("patch", "nodes"), ("patch", "nodes/status"), ("create", "events")})
API_DEADLINE_S = 60.0  # one agent's call, retries included
WATCH_DEADLINE_S = 600.0  # an agent waits this long for its Node at most
ON_WATCH_DEADLINE_S = 300.0  # every agent has read its missing Node
CONVERGE_DEADLINE_S = 300.0
REQUEST_TIMEOUT_S = 30.0
JOIN_S = 30.0


def _ready(capacity: Optional[Mapping[str, str]]) -> Readiness:
    return Readiness(ConditionStatus.TRUE, "GPUReady", "8 GPUs healthy, runtime ready")


REPORT = Report(labels=LABELS, readiness=_ready, condition_type=CONDITION_TYPE, host="bench")


def say(text: str) -> None:
    """Progress on stderr (the table is the output)."""
    sys.stderr.write(f"[{time.strftime('%H:%M:%S')}] {text}\n")
    sys.stderr.flush()


@dataclasses.dataclass(frozen=True)
class Steady:
    """The steady state: the daemon's default intervals divided by ``scale``, measured for
    ``hours`` simulated hours after a warm-up of half a condition refresh (so the refreshes,
    which come about once per ``condition_refresh_s`` after convergence, are not cut at the
    window's edges)."""

    scale: float = 60.0
    hours: float = 3.0

    def config(self) -> DaemonConfig:
        d = DaemonConfig()
        return DaemonConfig(
            redetect_interval_s=d.redetect_interval_s / self.scale,
            heartbeat_interval_s=d.heartbeat_interval_s / self.scale,
            heartbeat_jitter=d.heartbeat_jitter,
            condition_refresh_s=d.condition_refresh_s / self.scale,
        )

    @property
    def warmup_s(self) -> float:
        return self.config().condition_refresh_s / 2

    @property
    def measure_s(self) -> float:
        return self.hours * 3600 / self.scale


class Count:
    """A count other threads raise and one thread waits on, with a bound."""

    def __init__(self) -> None:
        self._n = 0
        self._cond = threading.Condition()

    def add(self) -> None:
        with self._cond:
            self._n += 1
            self._cond.notify_all()

    @property
    def value(self) -> int:
        with self._cond:
            return self._n

    def wait_for(self, n: int, deadline_s: float, what: str) -> bool:
        """True once the count reaches ``n``; False after ``deadline_s`` (progress said)."""
        end = time.monotonic() + deadline_s
        last = time.monotonic()
        with self._cond:
            while self._n < n:
                left = end - time.monotonic()
                if left <= 0:
                    say(f"{what}: {self._n}/{n} after {deadline_s:.0f} s, going on")
                    return False
                self._cond.wait(min(left, 5.0))
                if time.monotonic() - last >= 5.0:
                    say(f"{what}: {self._n}/{n}")
                    last = time.monotonic()
        return True


@dataclasses.dataclass
class Signals:
    """What the main thread and the agents tell each other."""

    on_watch: Count = dataclasses.field(default_factory=Count)  # read its Node: missing
    done: Count = dataclasses.field(default_factory=Count)  # reported (or failed)
    steady: threading.Event = dataclasses.field(default_factory=threading.Event)
    stop: threading.Event = dataclasses.field(default_factory=threading.Event)


class FleetAgent:
    """One node's agent, on its own thread (see the module's thread ownership)."""

    def __init__(self, cred: Credential, name: str, daemon: DaemonConfig, sig: Signals) -> None:
        self.name = name
        self.cred = cred
        self.daemon = daemon
        self.sig = sig
        self.registered_at = 0.0  # wall clock; set by a registrar thread
        self.converged_at = 0.0  # wall clock; 0: not (yet)
        self.error = ""
        self.thread = threading.Thread(target=self._run, name=f"agent-{name}", daemon=True)

    def _run(self) -> None:
        api = NodeAPI(self.cred.kubeconfig, self.name, deadline_s=API_DEADLINE_S)
        watching = False
        try:
            node = api.get_node()  # as ``nodeagent run`` starts: not registered yet
            self.sig.on_watch.add()
            watching = True
            if node is None:
                node = api.wait_for_node(WATCH_DEADLINE_S)
            REPORT.apply(api, node)
            self.converged_at = time.time()
            self.sig.done.add()
            self.sig.steady.wait()  # the main thread sets it, or stop, within its bounds
            self._heartbeats(api)
        except Exception as e:  # a bench records failures, it does not hide them
            self.error = f"{self.name}: {describe(e)}"
            if not watching:
                self.sig.on_watch.add()
            if not self.converged_at:
                self.sig.done.add()
        finally:
            api.close()

    def _heartbeats(self, api: NodeAPI) -> None:
        d = self.daemon
        schedule = ReportSchedule(time.monotonic(), d)
        while not self.sig.stop.is_set():
            now = time.monotonic()
            if self.sig.stop.wait(max(0.0, schedule.wake_at(now, None) - now)):
                return
            if not schedule.tick(time.monotonic(), d, requested=False).read_node:
                continue  # a re-detect: labels and readiness unchanged, no API call
            node = api.get_node()
            if node is None:
                raise RuntimeError(f"node {self.name} disappeared")
            refresh = d.condition_refresh_s
            age = heartbeat_age_s(node, CONDITION_TYPE, time.time())
            REPORT.apply(api, node, heartbeat=bool(refresh) and age >= refresh)


def _https(cred: Credential, ca: Path, url: str) -> http.client.HTTPSConnection:
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.load_cert_chain(str(cred.cert), str(cred.key))
    host, port = url.split("//", 1)[1].rsplit(":", 1)
    return http.client.HTTPSConnection(host, int(port), context=ctx, timeout=REQUEST_TIMEOUT_S)


def _call(
    cred: Credential, ca: Path, url: str, method: str, path: str, body: Any = None
) -> tuple[int, dict[str, Any]]:
    conn = _https(cred, ca, url)
    try:
        data = json.dumps(body).encode() if body is not None else None
        conn.request(
            method,
            path,
            body=data,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, json.loads(raw) if raw else {}
    finally:
        conn.close()


def registration(name: str) -> dict[str, Any]:
    """The Node a kubelet registers from the agent's args: well-known labels, the startup
    taint (``--register-with-taints``), the device plugin's GPUs already in capacity."""
    labels = {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux",
              "kubernetes.io/arch": "amd64"}  # fmt: skip
    taint = {"key": STARTUP_TAINT, "value": "pending", "effect": "NoSchedule"}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": labels},
        "spec": {"taints": [taint]},
        "status": {"capacity": CAPACITY, "allocatable": CAPACITY},
    }


def converged_node(node: Mapping[str, Any]) -> bool:
    """The Node carries the labels, ``GPUReady=True``, and still the startup taint (only the
    controller, not the agent, lifts it)."""
    labels = (node.get("metadata") or {}).get("labels") or {}
    conds = (node.get("status") or {}).get("conditions") or []
    taints = [t.get("key") for t in (node.get("spec") or {}).get("taints") or []]
    ok = any(c.get("type") == CONDITION_TYPE and c.get("status") == "True" for c in conds)
    return ok and STARTUP_TAINT in taints and all(labels.get(k) == v for k, v in LABELS.items())


@dataclasses.dataclass(frozen=True)
class Usage:
    """What the server's processes (by part) and the rest of the machine used in a phase."""

    seconds: float  # wall
    parts: Mapping[str, procstat.ProcSample]  # CPU used in the phase; memory at its end
    agents_cpu_s: float  # this process: the agents, the registrars
    machine_busy_s: float  # every process on every core

    @property
    def server_cpu_s(self) -> float:
        return sum(p.cpu_s for p in self.parts.values())

    @property
    def others_cores(self) -> float:
        """Cores busy with other work (not the server, not the agents) on average."""
        rest = self.machine_busy_s - self.server_cpu_s - self.agents_cpu_s
        return max(0.0, rest) / self.seconds if self.seconds else 0.0


@dataclasses.dataclass(frozen=True)
class Snapshot:
    at: float  # wall clock
    parts: Mapping[str, procstat.ProcSample]
    agents_cpu_s: float
    machine_busy_s: float

    @classmethod
    def take(cls, pids: Mapping[str, int]) -> Snapshot:
        me = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            time.time(),
            {name: procstat.sample(pid) for name, pid in pids.items()},
            me.ru_utime + me.ru_stime,
            procstat.machine_busy_s(),
        )

    def since(self, earlier: Snapshot) -> Usage:
        return Usage(
            self.at - earlier.at,
            {k: v - earlier.parts[k] for k, v in self.parts.items()},
            self.agents_cpu_s - earlier.agents_cpu_s,
            self.machine_busy_s - earlier.machine_busy_s,
        )


@dataclasses.dataclass(frozen=True)
class FleetResult:
    """One fleet's run against one server."""

    server: str
    n: int
    identities_s: float  # minting every node certificate, key and kubeconfig
    identity_workers: int
    registered_s: float  # first registration sent → last answered
    converged: int  # Nodes that carry the report, read back at the end
    errors: tuple[str, ...]
    latencies: tuple[float, ...]  # per node: registration sent → report done, sorted
    all_converged_s: float  # first registration sent → last report done
    report_writes_per_node: float
    report_reads_per_node: float
    peak_agent_writes_per_s: int  # the agents' writes, 1 s windows
    peak_writes_per_s: int  # with the kubelets' registrations
    refused: tuple[str, ...]  # every 403, as "user verb resource -> 403"
    retried: int  # 429 and 5xx answers
    idle: Usage  # the server before the fleet
    converge: Usage
    steady: Usage
    steady_hours: float  # simulated
    steady_scale: float
    steady_writes_per_node_hour: float
    steady_reads_per_node_hour: float
    steady_requests: int  # the agents' requests in the measured window
    peak_rss: Mapping[str, float]  # MiB, VmHWM at the end, by part
    load_before: float

    def pct(self, q: float) -> float:
        """The ``q`` quantile of the per-node latencies (nearest rank)."""
        lat = self.latencies
        return lat[min(len(lat) - 1, max(0, round(q * len(lat)) - 1))] if lat else 0.0

    @property
    def median(self) -> float:
        return statistics.median(self.latencies) if self.latencies else 0.0


def _peak(stamps: Sequence[float], start: float) -> int:
    windows = Tally(int(t - start) for t in stamps if t >= start)
    return max(windows.values()) if windows else 0


def run_fleet(
    server: Server,
    workdir: Path,
    n: int,
    steady: Optional[Steady],
    *,
    prefix: str = "fleet-",
    registrars: int = 16,
    settle_s: float = 1.0,
    idle_s: float = 0.0,
    report: Callable[[str], None] = say,
) -> FleetResult:
    """``n`` agents against ``server``: registration, convergence, then ``steady`` (None:
    none). ``settle_s``: the pause between the last agent's first read and the first
    registration; ``idle_s``: how long the server's own CPU is sampled, idle, first."""
    load_before = procstat.loadavg()
    pids = server.pids()
    idle0 = Snapshot.take(pids)
    time.sleep(idle_s)
    idle = Snapshot.take(pids).since(idle0)
    names = [f"{prefix}{i}" for i in range(n)]
    minted = mint_nodes(server.ca, server.url, names, workdir / "ids")
    admin = mint(server.ca, server.url, [("fleet-admin", ("system:masters",))],
                 workdir / "admin").credentials[0]  # fmt: skip
    if n > 1:
        report(f"{server.name}: {n} node identities in {minted.seconds:.2f} s "
               f"({minted.workers} openssl at a time)")  # fmt: skip
    sig = Signals()
    daemon = (steady or Steady()).config()
    agents = [FleetAgent(c, name, daemon, sig) for c, name in zip(minted.credentials, names)]
    users = {node_user(a.name) for a in agents}
    failed_registrations: list[str] = []

    def register(a: FleetAgent) -> None:
        a.registered_at = time.time()
        try:
            code, body = _call(a.cred, server.ca.cert, server.url, "POST", "/api/v1/nodes",
                               registration(a.name))  # fmt: skip
        except OSError as e:
            failed_registrations.append(f"{a.name}: registration: {e}")
            return
        if code != 201:
            failed_registrations.append(f"{a.name}: registration: HTTP {code}: "
                                        f"{body.get('message', '')}")  # fmt: skip

    try:
        for a in agents:
            a.thread.start()
        sig.on_watch.wait_for(n, ON_WATCH_DEADLINE_S, "agents waiting for their Node")
        time.sleep(settle_s)  # from its 404 to its watch, each agent takes a moment
        s0 = Snapshot.take(pids)
        if n > 1:
            report(f"{server.name}: registering {n} Nodes, {registrars} kubelets at a time")
        with ThreadPoolExecutor(max_workers=registrars, thread_name_prefix="kubelet") as pool:
            list(pool.map(register, agents))
        registered = time.time()
        sig.done.wait_for(n, CONVERGE_DEADLINE_S, "agents reported")
        s1 = Snapshot.take(pids)
        s2 = s3 = s1
        if steady is not None:
            report(f"{server.name}: converged; steady state, clock ÷{steady.scale:g}, "
                   f"{steady.warmup_s + steady.measure_s:.0f} s")  # fmt: skip
            sig.steady.set()
            time.sleep(steady.warmup_s)
            s2 = Snapshot.take(pids)
            time.sleep(steady.measure_s)
            s3 = Snapshot.take(pids)
    finally:
        sig.stop.set()
        sig.steady.set()
        for a in agents:
            a.thread.join(JOIN_S)

    logged = server.logged()
    code, listing = _call(admin, server.ca.cert, server.url, "GET", "/api/v1/nodes")
    items = (listing.get("items") or []) if code == 200 else []
    mine = {i["metadata"]["name"]: i for i in items if i["metadata"]["name"] in set(names)}
    converged = sum(converged_node(mine[name]) for name in names if name in mine)

    fleet = [r for r in logged if r.user in users]
    report_phase = [
        r for r in fleet if r.ts < s1.at and (r.verb, r.resource) != ("create", "nodes")
    ]
    agent_writes = [r for r in report_phase if (r.verb, r.resource) in AGENT_WRITES]
    all_writes = [r.ts for r in fleet if r.is_write and r.ts < s1.at]
    window = [r for r in fleet if s2.at <= r.ts < s3.at]
    scale = steady.scale if steady is not None else 0.0
    hours = (s3.at - s2.at) * scale / 3600
    done = sorted(a.converged_at - a.registered_at for a in agents if a.converged_at)
    last = max((a.converged_at for a in agents), default=s0.at)
    first = min((a.registered_at for a in agents if a.registered_at), default=s0.at)
    return FleetResult(
        server=server.name,
        n=n,
        identities_s=minted.seconds,
        identity_workers=minted.workers,
        registered_s=registered - first,
        converged=converged,
        errors=tuple(failed_registrations + [a.error for a in agents if a.error]),
        latencies=tuple(done),
        all_converged_s=last - first,
        report_writes_per_node=len(agent_writes) / n,
        report_reads_per_node=sum(1 for r in report_phase if not r.is_write) / n,
        peak_agent_writes_per_s=_peak([r.ts for r in agent_writes], first),
        peak_writes_per_s=_peak(all_writes, first),
        refused=tuple(f"{r.user} {r.verb} {r.resource} -> 403" for r in logged if r.code == 403),
        retried=sum(1 for r in logged if r.code == 429 or r.code >= 500),
        idle=idle,
        converge=s1.since(s0),
        steady=s3.since(s2),
        steady_hours=hours,
        steady_scale=scale,
        steady_writes_per_node_hour=sum(r.is_write for r in window) / n / hours if hours else 0,
        steady_requests=len(window),
        steady_reads_per_node_hour=sum(not r.is_write for r in window) / n / hours if hours else 0,
        peak_rss={k: v.peak_rss_mib for k, v in s3.parts.items()},
        load_before=load_before,
    )


def logged_summary(logged: Sequence[Logged]) -> str:
    """Requests by (verb, resource, code), most first: for a failure's message."""
    tally = Tally((r.verb, r.resource, r.code) for r in logged)
    return ", ".join(f"{v} {res or '-'} {c}: {k}" for (v, res, c), k in tally.most_common())
