"""What one step of ``apply`` did, and the one line it prints.

Every step of every phase ends in exactly one :class:`StepResult`, so the output, the exit
code, the metrics and the tests all read the same record. ``file_writes``, ``api_writes``
and ``activations`` are counted where they happen, which is how idempotence is asserted:
a second ``apply`` must end with all three at zero.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from nodeagent.errors import EXIT_FAILED, EXIT_OK, describe, exit_code_of
from nodeagent.runtime.engine import ACTIVATE_NONE, ACTIVATE_RELOAD, ACTIVATE_RESTART

OK = "ok"  # a read-only step that found what it needed (detect)
CHANGED = "changed"
UNCHANGED = "unchanged"
SKIPPED = "skipped"
FAILED = "failed"
WOULD_CHANGE = "would change"  # --dry-run

STATUSES = (OK, CHANGED, UNCHANGED, SKIPPED, FAILED, WOULD_CHANGE)

# How a written runtime config took effect, from what was done (ApplyResult.activation).
ACTIVATION_DONE = {
    ACTIVATE_NONE: "written",
    ACTIVATE_RELOAD: "reloaded",
    ACTIVATE_RESTART: "restarted",
}


def activation_done(activation: str) -> str:
    """The word for an :class:`ApplyResult`'s activation: written / reloaded / restarted."""
    return ACTIVATION_DONE.get(activation, f"written ({activation})")


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One step's outcome: its status, a one-line detail (why, for skipped and failed)."""

    step: str
    status: str
    detail: str
    # --dry-run: the file diffs and API patches the step would make.
    diff: str = ""
    file_writes: int = 0
    api_writes: int = 0
    activations: int = 0  # runtime reloads + restarts
    # For a failed step: the exit code its error carries (1 failed, 2 bad input, 3 no GPU).
    exit_code: int = EXIT_FAILED

    @classmethod
    def of_error(cls, step: str, e: BaseException) -> StepResult:
        """A step that raised: failed, one line, the error's exit code (1 for a bug)."""
        return cls(step, FAILED, describe(e), exit_code=exit_code_of(e))

    def line(self) -> str:
        return f"{self.step:<13}{self.status:<14}{self.detail}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "step": self.step,
            "status": self.status,
            "detail": self.detail,
            "file_writes": self.file_writes,
            "api_writes": self.api_writes,
            "activations": self.activations,
        }


@dataclasses.dataclass(frozen=True)
class Outcome:
    """A whole ``apply``: its steps in order and how long it took."""

    phase: str
    dry_run: bool
    results: tuple[StepResult, ...]
    elapsed_s: float

    @property
    def failed(self) -> tuple[StepResult, ...]:
        return tuple(r for r in self.results if r.status == FAILED)

    @property
    def exit_code(self) -> int:
        """The first failed step's code (steps run in the order an operator fixes them)."""
        return self.failed[0].exit_code if self.failed else EXIT_OK

    @property
    def writes(self) -> int:
        return sum(r.file_writes + r.api_writes for r in self.results)

    @property
    def activations(self) -> int:
        return sum(r.activations for r in self.results)

    def count(self, status: str) -> int:
        return sum(1 for r in self.results if r.status == status)

    def summary(self) -> str:
        """``apply bootstrap: ok · 1 ok, 2 changed · 0.11 s`` (an ASCII stream shows - for
        the dots: cli._tolerant_streams)."""
        parts = [f"{self.count(s)} {s}" for s in STATUSES if self.count(s)]
        verdict = "failed" if self.failed else ("dry run" if self.dry_run else "ok")
        head = f"apply {self.phase}: {verdict}"
        if self.failed:
            head += f" (first failure: {self.failed[0].step})"
        return f"{head} · {', '.join(parts)} · {self.elapsed_s:.2f} s"

    def to_dict(self) -> dict[str, Any]:
        return {
            "phase": self.phase,
            "dry_run": self.dry_run,
            "exit_code": self.exit_code,
            "elapsed_s": round(self.elapsed_s, 3),
            "steps": [r.to_dict() for r in self.results],
        }
