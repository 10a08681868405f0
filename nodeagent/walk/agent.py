"""``apply``: the whole job as phases over the parts.

    bootstrap  detect → runtime (configure) → kubelet-args        before the kubelet registers
    report     detect → runtime (verify only) → node              after it registered
    all        detect → runtime (configure) → kubelet-args → node

When the runtime consumes CDI, a ``cdi`` step follows the runtime step: it judges the
``nvidia.com/gpu`` spec against the GPUs (:mod:`nodeagent.runtime.cdi`) and, outside the
report phase, regenerates a missing or stale one with ``nvidia-ctk cdi generate``.

Each step reads its facts, plans purely (the engines' ``plan``, :func:`kubeletargs.plan`,
:meth:`Report.plan`), and only then writes — so ``--dry-run`` is the same walk with the
writes replaced by their diffs. A failing step does not stop the walk: the next steps still
run (the kubelet still gets its startup taint, the Node still hears why it is not ready),
and the first failure decides the exit code. A step that raises *anything* is such a failed
step: a :class:`NodeagentError` with its own line and exit code, any other exception (a bug)
as ``internal error: Type: message`` with exit 1 — never a traceback, never a stopped walk.
``nodeagent runtime configure`` is the runtime step alone (:meth:`Agent.step_runtime`).

:class:`Agent` keeps what is worth keeping between runs (the API client, whose credential
is re-read when it rotates; the Node's name; the kubelet-args path), so ``nodeagent run``
calls the same steps on every tick. The imperative shell: it may import every layer below
the walk; the daemon and the CLI call it, nothing below imports it. Heavy modules (NVML,
the kubernetes client, the engines) are imported where a step needs them, so a phase that
does not talk to the API never loads its client.
"""

from __future__ import annotations

import dataclasses
import functools
import subprocess
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Callable, Optional

from nodeagent.errors import EXIT_NO_GPU, NodeagentError, StepFailed, describe
from nodeagent.gpu.inventory import STATE_NVML_ERROR, STATE_OK, Inventory
from nodeagent.host.paths import HostRoot
from nodeagent.host.reader import read_optional
from nodeagent.log import get_logger
from nodeagent.walk.steps import (
    PHASES,
    Detected,
    NodeState,
    NodeStep,
    Outcome,
    Phase,
    RuntimeState,
    RuntimeStep,
    Status,
    Step,
    StepResult,
)

if TYPE_CHECKING:
    from nodeagent.config import Config
    from nodeagent.gpu.health import XidRecord
    from nodeagent.kube.client import NodeAPI
    from nodeagent.kube.node import Node, Taint
    from nodeagent.kube.readiness import Readiness
    from nodeagent.kube.report import Report
    from nodeagent.runtime.cdi import CDIFacts

log = get_logger(__name__)

# PHASES, NodeState and RuntimeState live in walk.steps; tests/test_units.py and the daemon
# import them from here.
__all__ = ["CPU_NODE", "PHASES", "Agent", "NodeState", "RuntimeState", "live_runtime", "summarize"]

CPU_NODE = "CPU node (no_gpu_is_error is false)"


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


def live_runtime(name: str, *, verified: bool, running: bool, warn: str = "") -> RuntimeStep:
    """Pure: a configured runtime as its daemon shows it — the one wording ``apply``,
    ``runtime configure`` and ``check``'s condition probe share."""
    if verified:
        detail = f"{name}: unchanged (the nvidia runtime is configured and running){warn}"
        return RuntimeStep(StepResult(Step.RUNTIME, Status.UNCHANGED, detail), RuntimeState(True))
    if not running:
        msg = f"{name}: unchanged (configured; the daemon is not running: it reads it at start)"
        return RuntimeStep(
            StepResult(Step.RUNTIME, Status.UNCHANGED, msg + warn), RuntimeState(None, msg)
        )
    msg = f"{name}: configured, but the running daemon does not show the nvidia runtime"
    return RuntimeStep(
        StepResult(Step.RUNTIME, Status.FAILED, msg + warn), RuntimeState(False, msg)
    )


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

    @functools.cached_property
    def kubelet_args_path(self) -> str:
        """The kubelet's extra-args file (host path): ``kube.kubelet_args_file``, else the
        OS family's default (found once per agent)."""
        from nodeagent.kube import kubeletargs

        return kubeletargs.find_path(
            self.cfg.kube, read_optional(self.root.path("/etc/os-release"))
        )

    @property
    def startup_taint(self) -> Optional[Taint]:
        from nodeagent.kube import kubeletargs

        return kubeletargs.startup_taint(self.cfg.kube)

    def node_name(self) -> str:
        if self._node_name is None:
            from nodeagent.kube.identity import node_name

            self._node_name = node_name(self.cfg, self.root, self.kubelet_args_path)
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
        phase: Phase = Phase.ALL,
        *,
        dry_run: bool = False,
        emit: Optional[Callable[[StepResult], None]] = None,
    ) -> Outcome:
        """Run ``phase``'s steps in order; ``emit`` gets each result as soon as it is known.
        The outcome carries the runtime state the runtime step found (``Outcome.runtime``)."""
        phase = Phase(phase)
        steps = PHASES[phase]
        start = time.monotonic()
        results: list[StepResult] = []

        def done(r: StepResult) -> None:
            results.append(r)
            log.info("apply.step", step=str(r.step), status=str(r.status), detail=r.detail)
            if emit is not None:
                emit(r)

        detected = self.detect_step()
        done(detected.result)
        inv = detected.inventory
        gpu_node = inv.state == STATE_OK or self.cfg.no_gpu_is_error
        runtime = RuntimeState()
        if Step.RUNTIME in steps:
            if inv.state != STATE_OK:
                done(StepResult(Step.RUNTIME, Status.SKIPPED, "no usable NVIDIA GPU (see detect)"))
            else:
                r, runtime = self.step_runtime(configure=phase is not Phase.REPORT, dry_run=dry_run)
                done(r)
                if runtime.cdi is not None and runtime.cdi.use.used:
                    regenerate = phase is not Phase.REPORT
                    r, runtime = self.step_cdi(inv, runtime, regenerate=regenerate, dry_run=dry_run)
                    done(r)
        if Step.KUBELET_ARGS in steps:
            if not gpu_node:
                done(StepResult(Step.KUBELET_ARGS, Status.SKIPPED, CPU_NODE))
            else:
                try:
                    r = self.step_kubelet_args(self.labels(inv), dry_run=dry_run)
                except Exception as e:
                    r = _failed(Step.KUBELET_ARGS, e)
                done(r)
        if Step.NODE in steps:
            if not gpu_node:
                done(StepResult(Step.NODE, Status.SKIPPED, CPU_NODE))
            else:
                try:
                    labels = self.labels(inv)
                except Exception as e:
                    done(_failed(Step.NODE, e))
                else:
                    required = phase is Phase.REPORT
                    done(
                        self.step_node(inv, labels, runtime, dry_run=dry_run, required=required)[0]
                    )
        return Outcome(
            phase=phase,
            dry_run=dry_run,
            results=tuple(results),
            elapsed_s=time.monotonic() - start,
            runtime=runtime,
        )

    # --- steps --------------------------------------------------------------------------

    def detect_step(self) -> Detected:
        """Detect, as a step: detection that raises is a failed step, and the inventory
        says NVML could not be read (a GPU node then still gets its startup taint)."""
        try:
            inv = self.detect()
            return Detected(inv, self.step_detect(inv))
        except Exception as e:
            r = _failed(Step.DETECT, e)
            inv = Inventory(state=STATE_NVML_ERROR, error=type(e).__name__, message=r.detail)
            return Detected(inv, r)

    def step_detect(self, inv: Inventory) -> StepResult:
        if inv.state == STATE_OK:
            return StepResult(Step.DETECT, Status.OK, summarize(inv))
        if not self.cfg.no_gpu_is_error:
            detail = f"{summarize(inv)}; a CPU node (no_gpu_is_error false)"
            return StepResult(Step.DETECT, Status.OK, detail)
        return StepResult(Step.DETECT, Status.FAILED, summarize(inv), exit_code=EXIT_NO_GPU)

    def step_runtime(
        self, *, configure: bool, dry_run: bool, engine: Optional[str] = None
    ) -> RuntimeStep:
        """Configure (or, in the report phase, only verify) the container runtime:
        ``engine`` (``--runtime``) or the configured one."""
        try:
            step = self._runtime(configure=configure, dry_run=dry_run, requested=engine)
        except Exception as e:
            r = _failed(Step.RUNTIME, e)
            return RuntimeStep(r, RuntimeState(False, r.detail))
        return RuntimeStep(step.result, dataclasses.replace(step.state, cdi=self.read_cdi(engine)))

    def read_cdi(self, requested: Optional[str] = None) -> Optional[CDIFacts]:
        """What the runtime's CDI looks like now: whether it consumes CDI, the spec files
        of its directories (None when there is no runtime or it cannot be read: the
        runtime step says why)."""
        from nodeagent.runtime import cdi
        from nodeagent.runtime.registry import make_engine
        from nodeagent.runtime.select import choose

        try:
            name = choose(self.cfg, self.root, requested)
            if name is None:
                return None
            engine = make_engine(name, self.cfg, self.root)
            return cdi.read_facts(self.root, engine.cdi_use(engine.read()))
        except Exception as e:
            log.debug("cdi.unreadable", error=describe(e), exc_info=e)
            return None

    def step_cdi(
        self, inv: Inventory, runtime: RuntimeState, *, regenerate: bool, dry_run: bool
    ) -> RuntimeStep:
        """The runtime consumes CDI: judge its ``nvidia.com/gpu`` spec and, when
        ``regenerate``, write a fresh one in place of a missing or stale one (generated by
        ``nvidia-ctk cdi generate`` to stdout, judged fresh, then written through the one
        writer). The state carries the CDI facts as they are afterwards."""
        try:
            return self._cdi(inv, runtime, regenerate=regenerate, dry_run=dry_run)
        except Exception as e:
            return RuntimeStep(_failed(Step.CDI, e), runtime)

    def _cdi(
        self, inv: Inventory, runtime: RuntimeState, *, regenerate: bool, dry_run: bool
    ) -> RuntimeStep:
        from nodeagent.host.change import FileChange
        from nodeagent.host.reader import read_text
        from nodeagent.host.writer import Writer
        from nodeagent.runtime import cdi

        facts = runtime.cdi
        assert facts is not None
        verdict = cdi.judge(facts, inv)
        step = Step.CDI

        def failed(detail: str) -> RuntimeStep:
            return RuntimeStep(StepResult(step, Status.FAILED, detail), runtime)

        if verdict.state in (cdi.State.FRESH, cdi.State.NOT_USED):
            return RuntimeStep(StepResult(step, Status.UNCHANGED, verdict.message), runtime)
        if verdict.state is cdi.State.INVALID:
            return failed(
                f"{verdict.message} (nodeagent never overwrites a malformed file: fix or "
                "remove it, then apply again)"
            )
        target = verdict.path or self.cfg.runtime.cdi_spec
        if not regenerate:
            return failed(f"{verdict.message} (the bootstrap phase regenerates it)")
        tool = self.root.which(self.cfg.runtime.nvidia_ctk)
        if tool is None:
            return failed(
                f"{verdict.message}; {self.cfg.runtime.nvidia_ctk} not found: install "
                f"nvidia-container-toolkit, then `nvidia-ctk cdi generate --output={target}`"
            )
        text = _generate(cdi.generate_argv(str(tool)))
        new = cdi.judge_generated(self.root, text, target, inv)
        if new.state is not cdi.State.FRESH:
            return failed(f"{tool.name} cdi generate wrote a spec that is not fresh: {new.message}")
        real, _ = self.root.resolve(target)
        current = read_text(real, target, max_bytes=cdi.MAX_SPEC_BYTES)
        change = FileChange.of(self.root.path(target), target, current, text)
        what = f"{target} for {len(inv.gpus)} GPUs (was {verdict.state}: {verdict.message})"
        if dry_run:
            detail = f"would regenerate {what}"
            return RuntimeStep(
                StepResult(step, Status.WOULD_CHANGE, detail, change.diff()), runtime
            )
        with Writer.of(self.root, self.cfg).session() as session:
            session.apply(change)
        after = dataclasses.replace(runtime, cdi=cdi.read_facts(self.root, facts.use))
        log.info("cdi.regenerated", path=target, was=str(verdict.state))
        return RuntimeStep(
            StepResult(step, Status.CHANGED, f"regenerated {what}", file_writes=1), after
        )

    def _runtime(self, *, configure: bool, dry_run: bool, requested: Optional[str]) -> RuntimeStep:
        from nodeagent.runtime.engine import Activation
        from nodeagent.runtime.registry import make_engine
        from nodeagent.runtime.select import choose

        name = choose(self.cfg, self.root, requested)
        if name is None:
            return RuntimeStep(
                StepResult(Step.RUNTIME, Status.SKIPPED, "runtime.engine is none"), RuntimeState()
            )
        engine = make_engine(name, self.cfg, self.root)
        facts = engine.read()
        plan = engine.plan(facts)
        warn = "".join(f"; warning: {w}" for w in plan.warnings)
        if not plan.changed:
            return live_runtime(name, verified=engine.verify(), running=facts.running, warn=warn)
        files = ", ".join(c.host_path for c in plan.changes if c.changed)
        if not configure:
            msg = f"{name}: {files} lacks the nvidia runtime (run the bootstrap phase)"
            return RuntimeStep(
                StepResult(Step.RUNTIME, Status.FAILED, msg), RuntimeState(False, msg)
            )
        if dry_run:
            detail = f"{name}: would change {files}; then {plan.activation} ({plan.reason}){warn}"
            return RuntimeStep(
                StepResult(Step.RUNTIME, Status.WOULD_CHANGE, detail, diff=plan.diff()),
                RuntimeState(),
            )
        result = engine.apply(plan)
        if not result.written:  # another run got there first (under the host lock)
            detail = f"{name}: unchanged (the nvidia runtime is already configured, by another run)"
            return RuntimeStep(
                StepResult(Step.RUNTIME, Status.UNCHANGED, detail + warn), RuntimeState(None)
            )
        verified = "verified" if result.verified else "not verified"
        extra = f" ({result.message})" if result.message else ""
        detail = (
            f"{name}: changed {', '.join(result.written)}; {result.activation.past_tense}; "
            f"{verified}{extra}{warn}"
        )
        return RuntimeStep(
            StepResult(
                Step.RUNTIME,
                Status.CHANGED,
                detail,
                file_writes=len(result.written),
                activations=0 if result.activation is Activation.NONE else 1,
            ),
            RuntimeState(True) if result.verified else RuntimeState(None, result.message),
        )

    def step_kubelet_args(self, labels: Mapping[str, str], *, dry_run: bool) -> StepResult:
        """The kubelet's extra-args file: the labels and the startup taint at registration."""
        from nodeagent.host.writer import Writer
        from nodeagent.kube import kubeletargs

        taint = self.startup_taint
        host_path = self.kubelet_args_path
        what = f"{len(labels)} labels" + (f", taint {taint.flag_value()}" if taint else "")
        step = Step.KUBELET_ARGS
        try:
            change = kubeletargs.plan(self.root, host_path, labels, taint)
            if not change.changed:
                return StepResult(step, Status.UNCHANGED, f"{host_path} has {what}")
            if dry_run:
                detail = f"would write {host_path}: {what}"
                return StepResult(step, Status.WOULD_CHANGE, detail, change.diff())
            with Writer.of(self.root, self.cfg).session() as session:
                if session.raced([change]):  # another agent wrote it meanwhile: plan again
                    change = kubeletargs.plan(self.root, host_path, labels, taint)
                    if not change.changed:
                        return StepResult(step, Status.UNCHANGED, f"{host_path} has {what}")
                session.apply(change)
        except NodeagentError as e:
            return _failed(step, e)
        return StepResult(
            step,
            Status.CHANGED,
            f"wrote {host_path}: {what} (the kubelet applies them when it registers)",
            file_writes=1,
        )

    def readiness_fn(
        self, inv: Inventory, runtime: RuntimeState, xid: Optional[XidRecord] = None
    ) -> Callable[[Optional[Mapping[str, str]]], Readiness]:
        """Readiness given the Node's capacity, for what this agent found."""
        from nodeagent.kube.readiness import Facts, assess
        from nodeagent.runtime.cdi import judge as judge_cdi

        cdi = judge_cdi(runtime.cdi, inv) if runtime.cdi is not None else None

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
                    cdi=cdi,
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
    ) -> NodeStep:
        """Labels, the readiness condition and an Event on this host's Node.

        ``required`` (the report phase): no credential is a failure, not a skip. ``wait``:
        wait for the Node to register (``kube.wait_for_node_s``) rather than skip."""
        try:
            if not self.credential_present():
                return self._no_credential(required)
            from nodeagent.kube.report import Report

            report = Report(
                labels=labels,
                readiness=self.readiness_fn(inv, runtime, xid),
                condition_type=self.cfg.kube.condition_type,
                host=self.node_name(),
                event_namespace=self.cfg.kube.event_namespace,
            )
            node = self.node_api().get_node()
            if node is None:
                if dry_run or not wait:
                    return self._unregistered(report, dry_run)
                node = self.node_api().wait_for_node(self.cfg.kube.wait_for_node_s)
            if dry_run:
                return self._node_dry_run(report, node, heartbeat)
            return self._node_write(report, node, heartbeat)
        except Exception as e:
            return NodeStep(_failed(Step.NODE, e), NodeState())

    def _no_credential(self, required: bool) -> NodeStep:
        msg = f"no credential at {self.cfg.kube.kubeconfig} (kube.kubeconfig)"
        if required:
            return NodeStep(StepResult(Step.NODE, Status.FAILED, msg, exit_code=1), NodeState())
        detail = msg + ": the kubelet has not joined yet"
        return NodeStep(StepResult(Step.NODE, Status.SKIPPED, detail), NodeState())

    def _unregistered(self, report: Report, dry_run: bool) -> NodeStep:
        name = self.node_name()
        if not dry_run:
            detail = f"Node {name} not registered yet"
            return NodeStep(StepResult(Step.NODE, Status.SKIPPED, detail), NodeState())
        k = self.cfg.kube
        detail = (
            f"Node {name} is not registered yet: would wait up to {k.wait_for_node_s:.0f} s, "
            f"then set {len(report.labels)} labels and {k.condition_type}"
        )
        return NodeStep(
            StepResult(Step.NODE, Status.WOULD_CHANGE, detail), NodeState(report.readiness(None))
        )

    def _node_dry_run(self, report: Report, node: Node, heartbeat: bool) -> NodeStep:
        from nodeagent.kube.report import now_rfc3339

        planned = report.plan(node, now_rfc3339(), heartbeat)
        r = planned.readiness
        if not planned.changed:
            return NodeStep(
                StepResult(Step.NODE, Status.UNCHANGED, _node_current(node.name, r)),
                NodeState(r, node),
            )
        what = " and ".join(
            w
            for w, p in (
                ("labels", planned.label_patch),
                (report.condition_type, planned.status_patch),
            )
            if p is not None
        )
        detail = f"Node {node.name}: would patch {what}; {_condition(r)}"
        return NodeStep(
            StepResult(Step.NODE, Status.WOULD_CHANGE, detail, planned.diff(node.name)),
            NodeState(r, node),
        )

    def _node_write(self, report: Report, node: Node, heartbeat: bool) -> NodeStep:
        rep = report.apply(self.node_api(), node, heartbeat=heartbeat)
        r, name = rep.readiness, self.node_name()
        if not rep.writes:
            return NodeStep(
                StepResult(Step.NODE, Status.UNCHANGED, _node_current(name, r)),
                NodeState(r, rep.node),
            )
        did = [
            w
            for w, flag in (
                ("labels", rep.labels_changed),
                (report.condition_type, rep.condition_changed),
                ("event", rep.event),
            )
            if flag
        ]
        detail = f"Node {name}: patched {', '.join(did)}; {_condition(r)}"
        return NodeStep(
            StepResult(Step.NODE, Status.CHANGED, detail, api_writes=rep.writes),
            NodeState(r, rep.node),
        )


# How long ``nvidia-ctk cdi generate`` may take (it walks the driver's files: ~1 s).
GENERATE_TIMEOUT_S = 60.0


def _generate(argv: list[str]) -> str:
    """The spec ``argv`` prints on stdout; StepFailed with its last line when it fails."""
    log.info("cdi.generate", argv=argv)
    try:
        proc = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=GENERATE_TIMEOUT_S,
            cwd="/",
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise StepFailed(f"{argv[0]}: no answer in {GENERATE_TIMEOUT_S:.0f} s") from None
    except OSError as e:
        raise StepFailed(f"{argv[0]}: {e.strerror or e}") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        last = lines[-1] if lines else ""
        raise StepFailed(f"{' '.join(argv[:3])}: exit {proc.returncode}: {last}")
    return proc.stdout


def _condition(r: Readiness) -> str:
    return f"{r.status} ({r.reason}: {r.message})"


def _node_current(name: str, r: Readiness) -> str:
    return f"Node {name}: labels current, condition {_condition(r)}"


def _failed(step: Step, e: BaseException) -> StepResult:
    """A step that raised ``e``: one line; a bug's traceback is logged at debug (-vv)."""
    if not isinstance(e, NodeagentError):
        log.debug("apply.step_crashed", step=str(step), error=describe(e), exc_info=e)
    return StepResult.of_error(step, e)
