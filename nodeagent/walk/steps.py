"""What one step of ``apply`` did, and what a whole ``apply`` found.

Every step of every phase ends in exactly one :class:`StepResult`, so the output, the exit
code, the metrics and the tests all read the same record. ``file_writes``, ``api_writes``
and ``activations`` are counted where they happen, which is how idempotence is asserted:
a second ``apply`` must end with all three at zero. The lines people read are made in
:mod:`nodeagent.cli.render`; this module holds data only (no I/O, no printing) and may
import only data modules (errors, the GPU inventory, the Node view, readiness, CDI facts).
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from nodeagent import StrEnum
from nodeagent.errors import EXIT_FAILED, EXIT_OK, describe, exit_code_of

if TYPE_CHECKING:  # annotations only: the CLI renders steps without loading these
    from nodeagent.gpu.inventory import Inventory
    from nodeagent.kube.node import Node
    from nodeagent.kube.readiness import Readiness
    from nodeagent.runtime.cdi import CDIFacts


class Step(StrEnum):
    """The steps of ``apply``, in the order they run."""

    DETECT = "detect"
    RUNTIME = "runtime"
    CDI = "cdi"  # only when the runtime consumes CDI (walk.agent.Agent.step_cdi)
    KUBELET_ARGS = "kubelet-args"
    NODE = "node"


class Phase(StrEnum):
    """``--phase``: which steps run (:data:`PHASES`)."""

    BOOTSTRAP = "bootstrap"  # before the kubelet registers
    REPORT = "report"  # after it registered
    ALL = "all"


PHASES: dict[str, tuple[Step, ...]] = {  # keyed by Phase (a str)
    Phase.BOOTSTRAP: (Step.DETECT, Step.RUNTIME, Step.KUBELET_ARGS),
    Phase.REPORT: (Step.DETECT, Step.RUNTIME, Step.NODE),
    Phase.ALL: (Step.DETECT, Step.RUNTIME, Step.KUBELET_ARGS, Step.NODE),
}


class Status(StrEnum):
    """How a step ended."""

    OK = "ok"  # a read-only step that found what it needed (detect)
    CHANGED = "changed"
    UNCHANGED = "unchanged"
    SKIPPED = "skipped"
    FAILED = "failed"
    WOULD_CHANGE = "would change"  # --dry-run


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One step's outcome: its status, a one-line detail (why, for skipped and failed)."""

    step: Step
    status: Status
    detail: str
    # --dry-run: the file diffs and API patches the step would make.
    diff: str = ""
    file_writes: int = 0
    api_writes: int = 0
    activations: int = 0  # runtime reloads + restarts
    # For a failed step: the exit code its error carries (1 failed, 2 bad input, 3 no GPU).
    exit_code: int = EXIT_FAILED

    @classmethod
    def of_error(cls, step: Step, e: BaseException) -> StepResult:
        """A step that raised: failed, one line, the error's exit code (1 for a bug)."""
        return cls(step, Status.FAILED, describe(e), exit_code=exit_code_of(e))

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": str(self.step),
            "status": str(self.status),
            "detail": self.detail,
            "file_writes": self.file_writes,
            "api_writes": self.api_writes,
            "activations": self.activations,
        }


@dataclasses.dataclass(frozen=True)
class RuntimeState:
    """What the runtime step learnt, for readiness: ``ok`` None = not checked (engine none,
    or a daemon that is not running yet); ``message`` says why when ``ok`` is False;
    ``cdi`` what it read of CDI (None: not read), judged against the GPUs by readiness."""

    ok: Optional[bool] = None
    message: str = ""
    cdi: Optional[CDIFacts] = None


@dataclasses.dataclass(frozen=True)
class NodeState:
    """What the node step learnt: the readiness it reported and the Node as last seen."""

    readiness: Optional[Readiness] = None
    node: Optional[Node] = None


@dataclasses.dataclass(frozen=True)
class Detected:
    """The detect step: the inventory (NVML's error as one when detection raised)."""

    inventory: Inventory
    result: StepResult


class RuntimeStep(NamedTuple):
    """The runtime step: its result and the runtime state readiness needs."""

    result: StepResult
    state: RuntimeState


class NodeStep(NamedTuple):
    """The node step: its result and what it learnt of the Node."""

    result: StepResult
    state: NodeState


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A whole ``apply``: its steps in order, what the runtime step found, how long it took."""

    phase: Phase
    dry_run: bool
    results: tuple[StepResult, ...]
    elapsed_s: float
    # The runtime state the runtime step found (not checked when it did not run).
    runtime: RuntimeState = RuntimeState()

    @property
    def failed(self) -> tuple[StepResult, ...]:
        return tuple(r for r in self.results if r.status == Status.FAILED)

    @property
    def exit_code(self) -> int:
        """The first failed step's code (steps run in the order an operator fixes them)."""
        return self.failed[0].exit_code if self.failed else EXIT_OK

    def count(self, status: Status) -> int:
        return sum(1 for r in self.results if r.status == status)

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": str(self.phase),
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "steps": [r.to_dict() for r in self.results],
        }
