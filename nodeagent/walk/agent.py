"""``apply``: the whole job as phases over the parts.

    bootstrap  detect → runtime (configure) → kubelet-args        before the kubelet registers
    report     detect → runtime (verify only) → node              after it registered
    all        detect → runtime (configure) → kubelet-args → node

Each step reads its facts, plans purely (the engines' ``plan``, :func:`kubeletargs.plan`,
:meth:`Report.plan`), and only then writes — so ``--dry-run`` is the same walk with the
writes replaced by their diffs. A failing step does not stop the walk: the next steps still
run (the kubelet still gets its startup taint, the Node still hears why it is not ready),
and the first failure decides the exit code. A step that raises *anything* is such a failed
step: a :class:`NodeagentError` with its own line and exit code, any other exception (a bug)
as ``internal error: Type: message`` with exit 1 — never a traceback, never a stopped walk.

:class:`Agent` keeps what is worth keeping between runs (the API client, whose credential
is re-read when it rotates), so ``nodeagent run`` calls the same steps on every tick.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Callable, Optional

from nodeagent.errors import EXIT_NO_GPU, NodeagentError, describe
from nodeagent.gpu.inventory import STATE_NVML_ERROR, STATE_OK, Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.log import get_logger
from nodeagent.walk.steps import (
    CHANGED,
    FAILED,
    OK,
    SKIPPED,
    UNCHANGED,
    WOULD_CHANGE,
    Outcome,
    StepResult,
    activation_done,
)

if TYPE_CHECKING:
    from nodeagent.config import Config
    from nodeagent.gpu.health import XidRecord
    from nodeagent.kube.client import NodeAPI
    from nodeagent.kube.readiness import Readiness

log = get_logger(__name__)

PHASES: dict[str, tuple[str, ...]] = {
    "bootstrap": ("detect", "runtime", "kubelet-args"),
    "report": ("detect", "runtime", "node"),
    "all": ("detect", "runtime", "kubelet-args", "node"),
}


@dataclasses.dataclass(frozen=True)
class RuntimeState:
    """What the runtime step learnt, for readiness: None = not checked (engine none)."""

    ok: Optional[bool] = None
    message: str = ""


@dataclasses.dataclass(frozen=True)
class NodeState:
    """What the node step learnt: the readiness it reported and the Node as last seen."""

    readiness: Optional[Readiness] = None
    node: Optional[dict[str, Any]] = None


def summarize(inv: Inventory) -> str:
    """One line for an inventory: ``8x NVIDIA H100 80GB HBM3 · driver 580.159.04 · CUDA 13.0``."""
    if inv.state != STATE_OK:
        return inv.message or inv.state
    counts: dict[str, int] = {}
    for g in inv.healthy_gpus:
        counts[g.name or "unknown GPU"] = counts.get(g.name or "unknown GPU", 0) + 1
    models = " + ".join(f"{n}x {name}" for name, n in counts.items()) or "no readable GPU"
    bad = [g for g in inv.gpus if not g.usable]
    if bad:
        models += " (" + ", ".join(f"GPU {g.index} {g.state}: {g.error}" for g in bad) + ")"
    return f"{models} · driver {inv.driver_version or '?'} · CUDA {inv.cuda_driver_version or '?'}"


class Agent:
    """The steps, over one config and one host root. The imperative shell of ``apply``."""

    def __init__(self, cfg: Config, root: HostRoot) -> None:
        self.cfg = cfg
        self.root = root
        self._api: Optional[NodeAPI] = None
        self._node_name: Optional[str] = None

    # --- facts --------------------------------------------------------------------------

    def detect(self) -> Inventory:
        from nodeagent.gpu.nvml import detect

        return detect(library=self.cfg.nvml_library, root=self.root)

    def labels(self, inv: Inventory) -> dict[str, str]:
        from nodeagent.labels.registry import node_labels

        return node_labels(inv, self.cfg.labels)

    def kubelet_args_path(self) -> str:
        from nodeagent.host.reader import read_optional
        from nodeagent.kube import kubeletargs

        return self.cfg.kube.kubelet_args_file or kubeletargs.detect_path(
            read_optional(self.root.path("/etc/os-release"))
        )

    def node_name(self) -> str:
        if self._node_name is None:
            from nodeagent.kube.identity import node_name

            self._node_name = node_name(self.cfg, self.root, self.kubelet_args_path())
        return self._node_name

    def credential_present(self) -> bool:
        return self.root.path(self.cfg.kube.kubeconfig).is_file()

    def node_api(self) -> NodeAPI:
        if self._api is None:
            from nodeagent.kube.client import NodeAPI

            self._api = NodeAPI(
                self.root.path(self.cfg.kube.kubeconfig),
                self.node_name(),
                deadline_s=self.cfg.kube.api_deadline_s,
                event_namespace=self.cfg.kube.event_namespace,
            )
        return self._api

    def close(self) -> None:
        if self._api is not None:
            self._api.close()
            self._api = None

    # --- the walk -----------------------------------------------------------------------

    def apply(
        self,
        phase: str = "all",
        *,
        dry_run: bool = False,
        emit: Optional[Callable[[StepResult], None]] = None,
    ) -> Outcome:
        """Run ``phase``'s steps in order; ``emit`` gets each result as soon as it is known."""
        steps = PHASES[phase]
        start = time.monotonic()
        results: list[StepResult] = []

        def done(r: StepResult) -> None:
            results.append(r)
            log.info("apply.step", step=r.step, status=r.status, detail=r.detail)
            if emit is not None:
                emit(r)

        inv, r = self.detect_step()
        done(r)
        gpu_node = inv.state == STATE_OK or self.cfg.no_gpu_is_error
        runtime = RuntimeState()
        if "runtime" in steps:
            if inv.state != STATE_OK:
                done(StepResult("runtime", SKIPPED, "no usable NVIDIA GPU (see detect)"))
            else:
                r, runtime = self.step_runtime(configure=phase != "report", dry_run=dry_run)
                done(r)
        if "kubelet-args" in steps:
            if not gpu_node:
                done(StepResult("kubelet-args", SKIPPED, "CPU node (no_gpu_is_error is false)"))
            else:
                try:
                    r = self.step_kubelet_args(self.labels(inv), dry_run=dry_run)
                except Exception as e:
                    r = _failed("kubelet-args", e)
                done(r)
        if "node" in steps:
            if not gpu_node:
                done(StepResult("node", SKIPPED, "CPU node (no_gpu_is_error is false)"))
            else:
                try:
                    labels = self.labels(inv)
                except Exception as e:
                    done(_failed("node", e))
                else:
                    r, _ = self.step_node(
                        inv, labels, runtime, dry_run=dry_run, required=phase == "report"
                    )
                    done(r)
        return Outcome(
            phase=phase,
            dry_run=dry_run,
            results=tuple(results),
            elapsed_s=time.monotonic() - start,
        )

    # --- steps --------------------------------------------------------------------------

    def detect_step(self) -> tuple[Inventory, StepResult]:
        """Detect, as a step: detection that raises is a failed step, and the inventory
        says NVML could not be read (a GPU node then still gets its startup taint)."""
        try:
            inv = self.detect()
            return inv, self.step_detect(inv)
        except Exception as e:
            r = _failed("detect", e)
            return Inventory(state=STATE_NVML_ERROR, error=type(e).__name__, message=r.detail), r

    def step_detect(self, inv: Inventory) -> StepResult:
        if inv.state == STATE_OK:
            return StepResult("detect", OK, summarize(inv))
        if not self.cfg.no_gpu_is_error:
            return StepResult("detect", OK, f"{summarize(inv)}; a CPU node (no_gpu_is_error false)")
        return StepResult("detect", FAILED, summarize(inv), exit_code=EXIT_NO_GPU)

    def step_runtime(self, *, configure: bool, dry_run: bool) -> tuple[StepResult, RuntimeState]:
        """Configure (or, in the report phase, only verify) the container runtime."""
        try:
            return self._runtime(configure=configure, dry_run=dry_run)
        except Exception as e:
            r = _failed("runtime", e)
            return r, RuntimeState(False, r.detail)

    def _runtime(self, *, configure: bool, dry_run: bool) -> tuple[StepResult, RuntimeState]:
        from nodeagent.runtime.engine import ACTIVATE_NONE, daemon_stopped
        from nodeagent.runtime.select import choose, make_engine

        name = choose(self.cfg, self.root)
        if name is None:
            return StepResult("runtime", SKIPPED, "runtime.engine is none"), RuntimeState()
        engine = make_engine(name, self.cfg, self.root)
        facts = engine.read()
        plan = engine.plan(facts)
        warn = "".join(f"; warning: {w}" for w in plan.warnings)
        if not plan.changed:
            ok = engine.verify()
            if ok:
                detail = f"{name}: the nvidia runtime is configured and running{warn}"
                return StepResult("runtime", UNCHANGED, detail), RuntimeState(True)
            msg = f"{name}: configured, but the running daemon does not show the nvidia runtime"
            if daemon_stopped(facts):
                msg = f"{name}: configured; the daemon is not running (it reads it at start)"
                return StepResult("runtime", UNCHANGED, msg + warn), RuntimeState(None, msg)
            return StepResult("runtime", FAILED, msg + warn), RuntimeState(False, msg)
        files = ", ".join(c.host_path for c in plan.changes if c.changed)
        if not configure:
            msg = f"{name}: {files} lacks the nvidia runtime (run the bootstrap phase)"
            return StepResult("runtime", FAILED, msg), RuntimeState(False, msg)
        if dry_run:
            detail = f"{name}: would change {files}; then {plan.activation} ({plan.reason}){warn}"
            return StepResult("runtime", WOULD_CHANGE, detail, diff=plan.diff()), RuntimeState()
        result = engine.apply(plan)
        if not result.written:  # another run got there first (under the host lock)
            detail = f"{name}: the nvidia runtime is configured (by a concurrent run){warn}"
            return StepResult("runtime", UNCHANGED, detail), RuntimeState(None)
        activated = 0 if result.activation == ACTIVATE_NONE else 1
        verified = "verified" if result.verified else "not verified"
        extra = f" ({result.message})" if result.message else ""
        written = ", ".join(result.written)
        detail = f"{name}: {written} {activation_done(result.activation)}; {verified}{extra}{warn}"
        state = RuntimeState(True) if result.verified else RuntimeState(None, result.message)
        return (
            StepResult(
                "runtime",
                CHANGED,
                detail,
                file_writes=len(result.written),
                activations=activated,
            ),
            state,
        )

    def step_kubelet_args(self, labels: Mapping[str, str], *, dry_run: bool) -> StepResult:
        """The kubelet's extra-args file: the labels and the startup taint at registration."""
        from nodeagent.host.writer import Writer
        from nodeagent.kube import kubeletargs

        k = self.cfg.kube
        taint = (
            kubeletargs.Taint(k.startup_taint_key, "", "NoSchedule") if k.startup_taint else None
        )
        host_path = self.kubelet_args_path()
        what = f"{len(labels)} labels" + (f", taint {taint.flag_value()}" if taint else "")
        try:
            change = kubeletargs.plan(self.root, host_path, labels, taint)
            if not change.changed:
                return StepResult("kubelet-args", UNCHANGED, f"{host_path} has {what}")
            if dry_run:
                return StepResult(
                    "kubelet-args", WOULD_CHANGE, f"would write {host_path}: {what}", change.diff()
                )
            writer = Writer(
                self.root, self.cfg.lock_file, self.cfg.backup_dir, self.cfg.backup_keep
            )
            with writer.session() as session:
                if session.raced([change]):  # another agent wrote it meanwhile: plan again
                    change = kubeletargs.plan(self.root, host_path, labels, taint)
                    if not change.changed:
                        return StepResult("kubelet-args", UNCHANGED, f"{host_path} has {what}")
                session.apply(change)
        except NodeagentError as e:
            return _failed("kubelet-args", e)
        return StepResult(
            "kubelet-args",
            CHANGED,
            f"wrote {host_path}: {what} (the kubelet applies them when it registers)",
            file_writes=1,
        )

    def readiness_fn(
        self, inv: Inventory, runtime: RuntimeState, xid: Optional[XidRecord] = None
    ) -> Callable[[Optional[Mapping[str, str]]], Readiness]:
        from nodeagent.kube.readiness import Facts, assess

        def judge(capacity: Optional[Mapping[str, str]]) -> Readiness:
            return assess(
                Facts(
                    inventory=inv,
                    runtime_ok=runtime.ok,
                    runtime_message=runtime.message,
                    capacity=capacity,
                    require_device_plugin=self.cfg.kube.require_device_plugin,
                    xid=xid.xid if xid else None,
                    xid_gpu=xid.gpu if xid else None,
                )
            )

        return judge

    def step_node(
        self,
        inv: Inventory,
        labels: Mapping[str, str],
        runtime: RuntimeState,
        *,
        dry_run: bool = False,
        required: bool = False,
        xid: Optional[XidRecord] = None,
        heartbeat: bool = False,
        wait: bool = True,
    ) -> tuple[StepResult, NodeState]:
        """Labels, the readiness condition and an Event on this host's Node."""
        try:
            return self._node(
                inv,
                labels,
                runtime,
                dry_run=dry_run,
                required=required,
                xid=xid,
                heartbeat=heartbeat,
                wait=wait,
            )
        except Exception as e:
            return _failed("node", e), NodeState()

    def _node(
        self,
        inv: Inventory,
        labels: Mapping[str, str],
        runtime: RuntimeState,
        *,
        dry_run: bool,
        required: bool,
        xid: Optional[XidRecord],
        heartbeat: bool,
        wait: bool,
    ) -> tuple[StepResult, NodeState]:
        from nodeagent.kube.report import Report, now_rfc3339

        if not self.credential_present():
            msg = f"no credential at {self.cfg.kube.kubeconfig} (kube.kubeconfig)"
            if required:
                return StepResult("node", FAILED, msg, exit_code=1), NodeState()
            return StepResult(
                "node", SKIPPED, msg + ": the kubelet has not joined yet"
            ), NodeState()
        report = Report(
            labels=labels,
            readiness=self.readiness_fn(inv, runtime, xid),
            condition_type=self.cfg.kube.condition_type,
            host=self.node_name(),
            event_namespace=self.cfg.kube.event_namespace,
        )
        name = self.node_name()
        api = self.node_api()
        node = api.get_node()
        if node is None:
            if dry_run:
                r = report.readiness(None)
                return (
                    StepResult(
                        "node",
                        WOULD_CHANGE,
                        f"Node {name} is not registered yet: would wait up to "
                        f"{self.cfg.kube.wait_for_node_s:.0f} s, then set {len(labels)} "
                        f"labels and {self.cfg.kube.condition_type}",
                    ),
                    NodeState(r),
                )
            if not wait:
                return StepResult("node", SKIPPED, f"Node {name} not registered yet"), NodeState()
            node = api.wait_for_node(self.cfg.kube.wait_for_node_s)
        if dry_run:
            lp, cp, r, _ = report.plan(node, now_rfc3339(), heartbeat)
            if lp is None and cp is None:
                return StepResult("node", UNCHANGED, _node_detail(name, r)), NodeState(r, node)
            diff = "".join(
                f"--- PATCH {url} (strategic merge)\n{json.dumps(p, indent=2)}\n"
                for url, p in (
                    (f"/api/v1/nodes/{name}", lp),
                    (f"/api/v1/nodes/{name}/status", cp),
                )
                if p is not None
            )
            what = " and ".join(
                w for w, p in (("labels", lp), (self.cfg.kube.condition_type, cp)) if p
            )
            detail = f"Node {name}: would patch {what}; {_node_detail(name, r, short=True)}"
            return StepResult("node", WOULD_CHANGE, detail, diff), NodeState(r, node)
        rep = report.apply(api, node, heartbeat=heartbeat)
        writes = int(rep.labels_changed) + int(rep.condition_changed) + int(rep.event)
        r = rep.readiness
        if not writes:
            return StepResult("node", UNCHANGED, _node_detail(name, r)), NodeState(r, rep.node)
        did = [
            w
            for w, flag in (
                ("labels", rep.labels_changed),
                (self.cfg.kube.condition_type, rep.condition_changed),
                ("event", rep.event),
            )
            if flag
        ]
        detail = f"Node {name}: patched {', '.join(did)}; {_node_detail(name, r, short=True)}"
        return StepResult("node", CHANGED, detail, api_writes=writes), NodeState(r, rep.node)


def _node_detail(name: str, r: Readiness, short: bool = False) -> str:
    cond = f"{r.status} ({r.reason}: {r.message})"
    return cond if short else f"Node {name}: labels current, condition {cond}"


def _failed(step: str, e: BaseException) -> StepResult:
    """A step that raised ``e``: one line; a bug's traceback is logged at debug (-vv)."""
    if not isinstance(e, NodeagentError):
        log.debug("apply.step_crashed", step=step, error=describe(e), exc_info=e)
    return StepResult.of_error(step, e)
