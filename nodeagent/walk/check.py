"""``nodeagent check``: read-only probes, each pass / warn / fail with a one-line fix.

Probes run in the order an operator fixes things (driver, GPUs, runtime, kubelet, API,
Node), each as a small function of :class:`Facts` — the facts are read once, lazily, and
shared, so the whole check reads NVML once, the runtime once and the Node once. Nothing
here writes: no file, no signal, no API write. A probe (or a fact it reads) that raises
anything is a failed probe with one line; the table is always printed whole. A fact that
is absent says why in a typed way (:class:`WhyNot`, :class:`NodeFactState`), so no probe
reads another's message. The JSON form (``-o json``) is documented in docs/operations.md
and versioned by :data:`SCHEMA_VERSION`; the table is made by
:func:`nodeagent.cli.render.check_table`.

May import every layer below the walk, for reading only; never the daemon or the CLI.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Generic, Optional, TypeVar

from nodeagent import StrEnum
from nodeagent.errors import InputError, NodeagentError, describe
from nodeagent.gpu.inventory import GPU_LOST, STATE_NO_GPU, STATE_OK, Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import read_bytes
from nodeagent.kube import kubeletargs
from nodeagent.kube.node import Condition, ConditionStatus, Node
from nodeagent.kube.patches import condition_changed, label_patch
from nodeagent.kube.readiness import (
    Finding,
    HealthReason,
    HealthWarning,
    gpu_problems,
    gpu_warnings,
)
from nodeagent.log import get_logger
from nodeagent.runtime import registry
from nodeagent.walk.agent import Agent, live_runtime
from nodeagent.walk.steps import Phase, RuntimeState

if TYPE_CHECKING:
    from nodeagent.config import Config
    from nodeagent.runtime.cdi import CDIFacts
    from nodeagent.runtime.engine import Engine, Plan

log = get_logger(__name__)

SCHEMA_VERSION = 1
API_DEADLINE_S = 3.0  # how long check waits for the API server, retries included
NVIDIA_PCI_VENDOR = "0x10de"
# How long after the condition turned True the controller may take to lift the taint.
TAINT_LIFT_GRACE_S = 60.0


class Result(StrEnum):
    """A probe's verdict, and the whole check's (the worst of them)."""

    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"


PASS, WARN, FAIL, SKIP = Result.PASS, Result.WARN, Result.FAIL, Result.SKIP


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    name: str
    result: Result
    message: str
    hint: str = ""  # how to fix it; empty on pass

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "result": str(self.result),
            "message": self.message,
            "hint": self.hint,
        }


def nvidia_pci_gpus(root: HostRoot) -> Optional[int]:
    """NVIDIA display/3D controllers on the PCI bus (class 0x03xxxx), or None without sysfs.

    A GPU that fell off the bus hard enough may vanish from NVML's count altogether; the
    PCI bus still lists it until it is removed, so the two counts disagreeing is the tell.
    """
    base = root.path("/sys/bus/pci/devices")
    try:
        devices = list(base.iterdir())
    except OSError:
        return None
    n = 0
    for d in devices:
        try:
            vendor = (d / "vendor").read_text().strip()
            cls = (d / "class").read_text().strip()
        except OSError:
            continue
        if vendor == NVIDIA_PCI_VENDOR and cls.startswith("0x03"):
            n += 1
    return n


class NodeFactState(StrEnum):
    """What reading this host's Node found."""

    REGISTERED = "registered"
    UNREGISTERED = "unregistered"
    NO_CREDENTIAL = "no-credential"
    BAD_CREDENTIAL = "bad-credential"
    API_FAILED = "api-failed"


@dataclasses.dataclass(frozen=True)
class NodeFact:
    state: NodeFactState
    node: Optional[Node]
    why: str  # empty when registered


class WhyNot(StrEnum):
    """Why a runtime fact is absent."""

    NO_ENGINE = "no-engine"  # runtime.engine is none: nothing to probe
    FAILED = "failed"  # reading it raised: ``Fact.why`` says what


T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Fact(Generic[T]):
    """A fact as read, or (``value`` None) why it is not there."""

    value: Optional[T]
    why_not: Optional[WhyNot] = None
    why: str = ""  # for people; empty when there is a value

    @classmethod
    def failed(cls, e: Exception) -> Fact[T]:
        return cls(None, WhyNot.FAILED, describe(e))

    def absent(self) -> Fact[Any]:
        """The same absence, for a fact that needs this one."""
        return Fact(None, self.why_not, self.why)


class Facts:
    """What the probes look at, each read at most once (and only if a probe needs it)."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.cfg: Config = agent.cfg
        self.root = agent.root

    @functools.cached_property
    def inventory(self) -> Inventory:
        return self.agent.detect()

    @functools.cached_property
    def pci_gpus(self) -> Optional[int]:
        return nvidia_pci_gpus(self.root)

    @functools.cached_property
    def engine(self) -> Fact[Engine[Any]]:
        from nodeagent.runtime.select import choose

        try:
            name = choose(self.cfg, self.root)
            if name is None:
                return Fact(None, WhyNot.NO_ENGINE, "runtime.engine is none")
            return Fact(registry.make_engine(name, self.cfg, self.root))
        except Exception as e:
            return Fact.failed(e)

    @functools.cached_property
    def runtime_facts(self) -> Fact[Any]:
        """What the engine read: its files, whether its daemon runs, ..."""
        engine = self.engine.value
        if engine is None:
            return self.engine.absent()
        try:
            return Fact(engine.read())
        except Exception as e:
            return Fact.failed(e)

    @functools.cached_property
    def runtime_plan(self) -> Fact[Plan]:
        engine, facts = self.engine.value, self.runtime_facts
        if engine is None or facts.value is None:
            return facts.absent()
        try:
            return Fact(engine.plan(facts.value))
        except Exception as e:
            return Fact.failed(e)

    @functools.cached_property
    def runtime_stopped(self) -> bool:
        """The engine's daemon is simply not running (as far as its facts tell)."""
        facts = self.runtime_facts.value
        return facts is not None and not facts.running

    @functools.cached_property
    def runtime_verified(self) -> bool:
        engine = self.engine.value
        return engine is not None and engine.verify()

    @functools.cached_property
    def runtime_state(self) -> RuntimeState:
        """The runtime as readiness sees it, worded as ``apply`` words it."""
        engine = self.engine.value
        if engine is None:
            return RuntimeState()
        verdict = live_runtime(
            engine.name, verified=self.runtime_verified, running=not self.runtime_stopped
        )
        return dataclasses.replace(verdict.state, cdi=self.cdi)

    @functools.cached_property
    def cdi(self) -> Optional[CDIFacts]:
        """The runtime's CDI: whether it consumes it, and its spec files (None: no runtime)."""
        return self.agent.read_cdi() if self.engine.value is not None else None

    @functools.cached_property
    def labels(self) -> dict[str, str]:
        return self.agent.labels(self.inventory)

    @functools.cached_property
    def node_fact(self) -> NodeFact:
        if not self.agent.credential_present():
            why = f"no credential at {self.cfg.kube.kubeconfig}"
            return NodeFact(NodeFactState.NO_CREDENTIAL, None, why)
        try:
            api = self.agent.node_api()
            api.deadline_s = min(api.deadline_s, API_DEADLINE_S)  # answer now or say why
            node = api.get_node()
        except InputError as e:  # the kubeconfig itself: the credential probe's finding
            return NodeFact(NodeFactState.BAD_CREDENTIAL, None, f"credential: {describe(e)}")
        except Exception as e:
            return NodeFact(NodeFactState.API_FAILED, None, f"API: {describe(e)}")
        if node is None:
            why = f"Node {self.agent.node_name()} is not registered"
            return NodeFact(NodeFactState.UNREGISTERED, None, why)
        return NodeFact(NodeFactState.REGISTERED, node, "")


# --- the probes -------------------------------------------------------------------------


def probe_nvml(f: Facts) -> ProbeResult:
    inv = f.inventory
    if inv.state in (STATE_OK, STATE_NO_GPU):
        return ProbeResult("nvml", PASS, f"NVML loads; driver {inv.driver_version}")
    hint = "install the NVIDIA driver (or `modprobe nvidia`); `nvidia-smi` must work"
    if inv.error == "NVML_ERROR_LIB_RM_VERSION_MISMATCH":
        hint = "the driver was upgraded under the loaded kernel module: reboot the node"
    elif inv.error == "NVML_ERROR_NO_PERMISSION":
        hint = "the agent cannot open /dev/nvidia*: run it as root (or fix the device modes)"
    result = FAIL if f.cfg.no_gpu_is_error else WARN
    return ProbeResult("nvml", result, inv.message or inv.state, hint)


def probe_gpus(f: Facts) -> ProbeResult:
    inv = f.inventory
    if inv.state != STATE_OK:
        if inv.state == STATE_NO_GPU and not f.cfg.no_gpu_is_error:
            return ProbeResult("gpus", PASS, "no GPU: a CPU node (no_gpu_is_error false)")
        return ProbeResult(
            "gpus",
            FAIL if f.cfg.no_gpu_is_error else WARN,
            inv.message or "no GPU",
            "check the nvml probe first; `nvidia-smi -L` lists what the driver sees",
        )
    bad = [g for g in inv.gpus if not g.usable]
    if bad:
        g = bad[0]
        lost = g.state == GPU_LOST
        return ProbeResult(
            "gpus",
            FAIL,
            f"GPU {g.index} {'fell off the bus' if lost else 'cannot be read'} ({g.error}); "
            f"{len(inv.gpus) - len(bad)} of {len(inv.gpus)} usable",
            "drain the node and reset the GPU (`nvidia-smi -r`) or reboot; look for XID 79 in "
            "`dmesg`"
            if lost
            else f"`nvidia-smi -i {g.index} -q` shows the error; a reset or reboot clears most",
        )
    pci = f.pci_gpus
    if pci is not None and pci > len(inv.gpus):
        return ProbeResult(
            "gpus",
            FAIL,
            f"NVML sees {len(inv.gpus)} of the {pci} NVIDIA GPUs on the PCI bus",
            "a GPU is on the bus but not usable by the driver: check `dmesg` for XIDs, reboot",
        )
    return ProbeResult("gpus", PASS, f"{len(inv.gpus)} GPUs readable, none lost")


_RESET = "drain the node, then reset GPU {i} (`nvidia-smi -r -i {i}`) or reboot"

# What the operator does about each GPU health finding ({i}: the first GPU's index).
HEALTH_FIXES: dict[HealthReason | HealthWarning, str] = {
    HealthReason.ROW_REMAP_FAILURE: "drain the node and replace GPU {i} (RMA); "
    "`nvidia-smi -q -d ROW_REMAPPER -i {i}` shows it",
    HealthReason.RECOVERY_SYSTEM_REBOOT: "drain the node and power-cycle the system",
    HealthReason.RECOVERY_NODE_REBOOT: "drain the node and reboot it",
    HealthReason.RECOVERY_BUS_RESET: "drain the node, then reset GPU {i}'s PCIe bus or reboot",
    HealthReason.RECOVERY_DRAIN_AND_RESET: _RESET,
    HealthReason.RECOVERY_GPU_RESET: _RESET,
    HealthReason.RECOVERY_DRAIN_P2P: "drain the node (stop peer-to-peer work on GPU {i}); "
    "`nvidia-smi -q -i {i}` shows when the action clears",
    HealthReason.RECOVERY_IMEX_DOMAIN: "recover the IMEX domain: restart nvidia-imex on "
    "every node of the domain (`systemctl restart nvidia-imex`)",
    HealthReason.RECOVERY_UNKNOWN: "`nvidia-smi -q -i {i}` names the recovery action; "
    "a newer nodeagent knows it",
    HealthReason.GPU_RESET_REQUIRED: _RESET + " so the pending row remap takes effect",
    HealthReason.RETIRED_PAGES_PENDING: _RESET + " so the pending page retirement takes effect",
    HealthReason.UNCORRECTABLE_ECC: _RESET + "; if the errors come back, replace it (RMA)",
    HealthReason.FABRIC_FAILURE: "`systemctl status nvidia-fabricmanager` and its journal; "
    "restart it, reset the GPUs or reboot",
    HealthReason.FABRIC_NOT_READY: "wait for the fabric manager to train the NVLink fabric; "
    "if it stays, `systemctl status nvidia-fabricmanager`",
    HealthWarning.SIGNAL_UNREADABLE: "`nvidia-smi -q -i {i}`; a driver update or a reset "
    "clears most NVML errors",
    HealthWarning.FABRIC_DEGRADED: "`nvidia-smi nvlink -s -i {i}` shows the links; "
    "`systemctl status nvidia-fabricmanager`",
    HealthWarning.HW_SLOWDOWN: "check cooling and power (`nvidia-smi -q -d PERFORMANCE -i {i}`)",
    HealthWarning.HW_THERMAL_SLOWDOWN: "the GPU is too hot: check the cooling "
    "(`nvidia-smi -q -d TEMPERATURE -i {i}`)",
    HealthWarning.HW_POWER_BRAKE: "the power supply asserted the brake: check the PSUs",
    HealthWarning.PERSISTENCE_MODE_OFF: "enable the persistence daemon "
    "(`systemctl enable --now nvidia-persistenced`)",
}


def _finding(result: Result, found: tuple[Finding, ...]) -> ProbeResult:
    first = found[0]
    more = f" (+{len(found) - 1} more)" if len(found) > 1 else ""
    return ProbeResult(
        "gpu-health",
        result,
        f"{first.kind}: {first.message}{more}",
        HEALTH_FIXES[first.kind].format(i=first.gpu.index),
    )


def probe_gpu_health(f: Facts) -> ProbeResult:
    """NVML's health signals of the readable GPUs: a problem fails (GPUReady is False for
    it), a warning warns; the first in readiness's precedence is shown, with its fix."""
    inv = f.inventory
    if inv.state != STATE_OK:
        return ProbeResult("gpu-health", SKIP, "no GPU readable: see the gpus probe")
    problems = gpu_problems(inv)
    if problems:
        return _finding(FAIL, problems)
    warnings = gpu_warnings(inv)
    if warnings:
        return _finding(WARN, warnings)
    return ProbeResult(
        "gpu-health", PASS, f"{len(inv.healthy_gpus)} GPUs: no health problem NVML reports"
    )


def probe_runtime_binary(f: Facts) -> ProbeResult:
    if f.engine.value is None:
        return ProbeResult("runtime-binary", SKIP, f.engine.why)
    found = f.root.which(f.cfg.runtime.path)
    if found is None:
        return ProbeResult(
            "runtime-binary",
            FAIL,
            f"{f.cfg.runtime.path} not found in the service PATH",
            "install nvidia-container-toolkit (it ships nvidia-container-runtime)",
        )
    return ProbeResult("runtime-binary", PASS, f"{f.cfg.runtime.path} at /{_host(f, found)}")


def _host(f: Facts, p: Path) -> str:
    try:
        return str(p.relative_to(f.root.root))
    except ValueError:
        return str(p)


def probe_runtime_config(f: Facts) -> ProbeResult:
    engine = f.engine.value
    if engine is None:
        status = SKIP if f.engine.why_not is WhyNot.NO_ENGINE else FAIL
        return ProbeResult("runtime-config", status, f.engine.why, "set runtime.engine")
    plan = f.runtime_plan.value
    if plan is None:
        return ProbeResult(
            "runtime-config",
            FAIL,
            f.runtime_plan.why,
            "fix the file at the line named (nodeagent never overwrites a malformed file)",
        )
    facts = f.runtime_facts.value
    mismatches = engine.mismatches(facts) if facts is not None else ()
    if mismatches:
        return ProbeResult(
            "runtime-config",
            FAIL,
            f"{engine.name}: {mismatches[0]}"
            + (f" (+{len(mismatches) - 1} more)" if len(mismatches) > 1 else ""),
            "GPU pods would run with another cgroup driver or runtime type than the others: "
            "`nodeagent runtime configure` brings it in line",
        )
    if plan.changed:
        files = ", ".join(c.host_path for c in plan.changes if c.changed)
        return ProbeResult(
            "runtime-config",
            FAIL,
            f"{engine.name}: {files} lacks the nvidia runtime"
            + (" as default" if f.cfg.runtime.set_as_default else ""),
            "`nodeagent apply --phase bootstrap --dry-run` shows the change; drop --dry-run",
        )
    return ProbeResult("runtime-config", PASS, f"{engine.name}: nvidia runtime configured")


def probe_runtime_daemon(f: Facts) -> ProbeResult:
    engine = f.engine.value
    if engine is None:
        return ProbeResult("runtime-daemon", SKIP, f.engine.why)
    if f.runtime_verified:
        what = " (default)" if f.cfg.runtime.set_as_default else ""
        return ProbeResult(
            "runtime-daemon", PASS, f"{engine.name} runs with the nvidia runtime{what}"
        )
    spec = registry.spec(engine.name)
    if f.runtime_stopped:
        return ProbeResult(
            "runtime-daemon",
            FAIL,
            f"{engine.name} is not running",
            spec.start_hint(f.cfg.runtime),
        )
    return ProbeResult(
        "runtime-daemon",
        FAIL,
        f"{engine.name} answers but does not show the nvidia runtime"
        + (" as default" if f.cfg.runtime.set_as_default else ""),
        spec.take_config_hint(f.cfg.runtime),
    )


def probe_cdi(f: Facts) -> ProbeResult:
    """When the runtime consumes CDI: its ``nvidia.com/gpu`` spec parses and names every
    GPU NVML sees, and nothing it mounts is gone (GPUReady is False otherwise)."""
    from nodeagent.runtime import cdi

    facts = f.cdi
    if facts is None:
        return ProbeResult("cdi", SKIP, f.engine.why or "the runtime could not be read")
    verdict = cdi.judge(facts, f.inventory)
    if verdict.state is cdi.State.NOT_USED:
        return ProbeResult("cdi", SKIP, f"CDI not used: {verdict.message}")
    if verdict.state is cdi.State.FRESH:
        return ProbeResult("cdi", PASS, verdict.message)
    target = verdict.path or f.cfg.runtime.cdi_spec
    generate = f"`nvidia-ctk cdi generate --output={target}`"
    if verdict.state is cdi.State.INVALID:
        hint = f"fix or remove {target}; {generate} writes a new one"
    elif f.root.which(f.cfg.runtime.nvidia_ctk) is not None:
        hint = f"`nodeagent apply` regenerates it (or run {generate})"
    else:
        hint = f"install nvidia-container-toolkit, then run {generate}"
    return ProbeResult("cdi", FAIL, f"{verdict.reason}: {verdict.message}", hint)


def probe_kubelet_args(f: Facts) -> ProbeResult:
    if f.inventory.state != STATE_OK and not f.cfg.no_gpu_is_error:
        return ProbeResult("kubelet-args", SKIP, "CPU node")
    taint = f.agent.startup_taint
    path = f.agent.kubelet_args_path
    try:
        change = kubeletargs.plan(f.root, path, f.labels, taint)
    except NodeagentError as e:
        return ProbeResult("kubelet-args", FAIL, str(e), f"fix {path}")
    if not change.changed:
        what = f"{len(f.labels)} labels" + (" and the startup taint" if taint else "")
        return ProbeResult("kubelet-args", PASS, f"{path} carries {what}")
    registered = f.node_fact.node is not None
    return ProbeResult(
        "kubelet-args",
        WARN if registered else FAIL,
        f"{path} {'is missing' if change.old is None else 'is not current'}"
        + (" (applies at the next registration only)" if registered else ""),
        "`nodeagent apply --phase bootstrap` writes it",
    )


def probe_credential(f: Facts) -> ProbeResult:
    """The kubeconfig parses (its current context resolves) and every file it names reads."""
    from nodeagent.kube.client import certificate_not_after, read_kubeconfig

    shown = f.cfg.kube.kubeconfig
    kc = f.root.path(shown)
    try:
        parsed = read_kubeconfig(kc, shown) if read_bytes(kc, shown) is not None else None
    except NodeagentError as e:
        return ProbeResult(
            "credential",
            FAIL,
            describe(e),
            "the kubelet writes it when it joins: re-join the node, or fix what is named",
        )
    if parsed is None:
        return ProbeResult(
            "credential",
            FAIL,
            f"{shown} does not exist",
            "the kubelet writes it when it joins (kubeadm join); or set kube.kubeconfig",
        )
    for p in parsed.files[1:]:
        try:
            found = read_bytes(p, str(p))
        except NodeagentError as e:
            return ProbeResult(
                "credential", FAIL, describe(e), "run as root; check the file's mode"
            )
        if found is None:
            return ProbeResult(
                "credential",
                FAIL,
                f"{p}: does not exist (named by {shown})",
                "the kubelet writes its certificates when it joins; re-join the node",
            )
    if parsed.cert_file is not None:
        not_after = certificate_not_after(parsed.cert_file)
        if not_after is not None and not_after < datetime.datetime.now(datetime.timezone.utc):
            return ProbeResult(
                "credential",
                FAIL,
                f"{parsed.cert_file}: client certificate expired {not_after:%Y-%m-%d %H:%M} UTC",
                "the kubelet rotates it (rotateCertificates: true); restart the kubelet",
            )
    return ProbeResult("credential", PASS, f"{shown} readable")


def probe_api(f: Facts) -> ProbeResult:
    fact = f.node_fact
    if fact.state in (NodeFactState.REGISTERED, NodeFactState.UNREGISTERED):
        return ProbeResult("api", PASS, "the API server answers")
    if fact.state in (NodeFactState.NO_CREDENTIAL, NodeFactState.BAD_CREDENTIAL):
        # the credential probe says why
        return ProbeResult("api", SKIP, fact.why)
    why = fact.why
    return ProbeResult(
        "api", FAIL, why, "check the server address and network (`kubectl get --raw /healthz`)"
    )


def probe_node(f: Facts) -> ProbeResult:
    fact = f.node_fact
    if fact.state is NodeFactState.UNREGISTERED:
        return ProbeResult(
            "node",
            FAIL,
            fact.why,
            "is the kubelet running (`systemctl status kubelet`) and registering under "
            "this name (node_name / --hostname-override)?",
        )
    if fact.node is None:
        return ProbeResult("node", SKIP, fact.why)
    return ProbeResult("node", PASS, f"Node {f.agent.node_name()} exists")


def probe_labels(f: Facts) -> ProbeResult:
    node = f.node_fact.node
    if node is None:
        return ProbeResult("labels", SKIP, f.node_fact.why)
    patch = label_patch(node.labels, node.annotations, f.labels)
    if patch is None:
        return ProbeResult("labels", PASS, f"{len(f.labels)} labels current")
    keys = sorted((patch["metadata"].get("labels") or {}).keys())
    shown = ", ".join(keys[:3]) + (f" (+{len(keys) - 3})" if len(keys) > 3 else "")
    return ProbeResult(
        "labels",
        FAIL,
        f"{len(keys)} labels differ from the GPUs: {shown or 'ownership annotation'}",
        "`nodeagent apply --phase report` (is `nodeagent run` running?)",
    )


def probe_condition(f: Facts) -> ProbeResult:
    node = f.node_fact.node
    ctype = f.cfg.kube.condition_type
    if node is None:
        return ProbeResult("condition", SKIP, f.node_fact.why)
    current = node.condition(ctype)
    want = f.agent.readiness_fn(f.inventory, f.runtime_state)(node.capacity)
    if current is None:
        return ProbeResult(
            "condition", FAIL, f"{ctype} is not set", "`nodeagent apply --phase report`"
        )
    shown = f"{ctype}={current.status} ({current.reason})"
    if condition_changed(current, want):
        return ProbeResult(
            "condition",
            FAIL,
            f"{shown}, but now it is {want.status} ({want.reason}: {want.message})",
            "is `nodeagent run` running? (`systemctl status nodeagent`)",
        )
    if want.status is not ConditionStatus.TRUE:
        return ProbeResult(
            "condition", WARN, f"{shown}: {want.message}", "fix what the probes above report"
        )
    return ProbeResult("condition", PASS, shown)


def probe_startup_taint(f: Facts) -> ProbeResult:
    node = f.node_fact.node
    key = f.cfg.kube.startup_taint_key
    ctype = f.cfg.kube.condition_type
    if node is None:
        return ProbeResult("startup-taint", SKIP, f.node_fact.why)
    tainted = node.has_taint(key)
    cond = node.condition(ctype)
    ready = cond is not None and cond.status is ConditionStatus.TRUE
    if tainted and ready and _age_s(cond) < TAINT_LIFT_GRACE_S:
        return ProbeResult(
            "startup-taint",
            WARN,
            f"{key} is still on the Node; {ctype} turned True {_age_s(cond):.0f} s ago",
            "the controller lifts it within seconds; if it stays, see the next check",
        )
    if tainted and ready:
        return ProbeResult(
            "startup-taint",
            FAIL,
            f"{key} is still on the Node although {ctype} is True",
            "deploy the controller that lifts it: `kubectl apply -f deploy/controller.yaml`",
        )
    if tainted:
        return ProbeResult("startup-taint", PASS, f"{key} kept until the GPUs are ready")
    return ProbeResult("startup-taint", PASS, "no startup taint left")


def _age_s(cond: Optional[Condition]) -> float:
    """Seconds since the condition's lastTransitionTime (inf when absent or unreadable)."""
    since = cond.last_transition_time if cond is not None else None
    return float("inf") if since is None else time.time() - since


Probe = Callable[[Facts], ProbeResult]

PROBES: tuple[tuple[str, Probe, frozenset[Phase]], ...] = (
    ("nvml", probe_nvml, frozenset({Phase.BOOTSTRAP, Phase.REPORT})),
    ("gpus", probe_gpus, frozenset({Phase.BOOTSTRAP, Phase.REPORT})),
    ("gpu-health", probe_gpu_health, frozenset({Phase.BOOTSTRAP, Phase.REPORT})),
    ("runtime-binary", probe_runtime_binary, frozenset({Phase.BOOTSTRAP})),
    ("runtime-config", probe_runtime_config, frozenset({Phase.BOOTSTRAP})),
    ("runtime-daemon", probe_runtime_daemon, frozenset({Phase.BOOTSTRAP, Phase.REPORT})),
    ("cdi", probe_cdi, frozenset({Phase.BOOTSTRAP, Phase.REPORT})),
    ("kubelet-args", probe_kubelet_args, frozenset({Phase.BOOTSTRAP})),
    ("credential", probe_credential, frozenset({Phase.REPORT})),
    ("api", probe_api, frozenset({Phase.REPORT})),
    ("node", probe_node, frozenset({Phase.REPORT})),
    ("labels", probe_labels, frozenset({Phase.REPORT})),
    ("condition", probe_condition, frozenset({Phase.REPORT})),
    ("startup-taint", probe_startup_taint, frozenset({Phase.REPORT})),
)


@dataclasses.dataclass(frozen=True)
class Report:
    """A whole check: the probes' results in order."""

    node: str
    phase: Phase
    probes: tuple[ProbeResult, ...]
    elapsed_s: float

    def worst(self, strict: bool = False) -> Result:
        results = {p.result for p in self.probes}
        if FAIL in results or (strict and WARN in results):
            return FAIL
        return WARN if WARN in results else PASS

    def exit_code(self, strict: bool = False) -> int:
        return 1 if self.worst(strict) == FAIL else 0

    def to_dict(self, strict: bool = False) -> dict[str, Any]:
        return {
            "schema_version": SCHEMA_VERSION,
            "node": self.node,
            "phase": str(self.phase),
            "result": str(self.worst(strict)),
            "elapsed_s": round(self.elapsed_s, 3),
            "probes": [p.to_dict() for p in self.probes],
        }


def run(agent: Agent, phase: Phase = Phase.ALL) -> Report:
    """Every probe of ``phase`` (bootstrap, report, all), in order. Never writes."""
    start = time.monotonic()
    facts = Facts(agent)
    out: list[ProbeResult] = []
    for name, probe, phases in PROBES:
        if phase is not Phase.ALL and phase not in phases:
            continue
        try:
            out.append(probe(facts))
        except Exception as e:  # a probe that raises is a failed probe, never a crash
            out.append(_crashed(name, e))
    try:
        node = agent.node_name()
    except Exception:  # the identity probes' own problem; the table still has a title
        node = "?"
    return Report(node, phase, tuple(out), time.monotonic() - start)


def _crashed(name: str, e: Exception) -> ProbeResult:
    if isinstance(e, NodeagentError):
        return ProbeResult(name, FAIL, describe(e), "fix what the message names")
    log.debug("check.probe_crashed", probe=name, error=describe(e), exc_info=e)
    return ProbeResult(name, FAIL, describe(e), "a bug in nodeagent: please report it (-vv)")
