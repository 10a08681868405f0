"""Rendering command results for people (lines, tables) and programs (JSON, YAML).

Every human-readable form the CLI prints is made here: apply's step lines and summary,
``runtime configure``'s line, check's table, the detect table. Pure: strings from records,
no I/O but :func:`emit`'s write to the stream it is given. May import the records it
renders (walk, gpu); nothing below the CLI imports it.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, TextIO

from nodeagent.walk.steps import Outcome, Status, StepResult

if TYPE_CHECKING:  # only their shapes: check's and detect's modules load when they run
    from nodeagent.gpu.inventory import Inventory
    from nodeagent.walk.check import Report, Result


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns separated by two spaces; None shows as '-'."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines) + "\n"


def _cell(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def to_json(doc: Any) -> str:
    return json.dumps(doc, indent=2, sort_keys=False) + "\n"


def to_yaml(doc: Any) -> str:
    import yaml

    return str(yaml.safe_dump(doc, sort_keys=False, default_flow_style=False))


def emit(doc: Any, fmt: str, out: TextIO = sys.stdout) -> None:
    out.write(to_json(doc) if fmt == "json" else to_yaml(doc))


def detect_table(inv: Inventory, labels: dict[str, str]) -> str:
    head = (
        f"Driver {inv.driver_version or '-'}  CUDA {inv.cuda_driver_version or '-'}  "
        f"NVML {inv.nvml_version or '-'}  Machine {inv.machine or '-'}\n\n"
    )
    rows = []
    for g in inv.gpus:
        mig = g.mig_mode_current or "n/a"
        if g.mig_mode_pending and g.mig_mode_pending != g.mig_mode_current:
            mig += f" (pending {g.mig_mode_pending})"
        if g.mig_devices:
            mig += f", {len(g.mig_devices)} devices"
        rows.append(
            (
                g.index,
                g.name,
                f"{g.memory_total_mib} MiB" if g.memory_total_mib is not None else None,
                g.compute_capability,
                g.architecture,
                mig,
                f"{g.power_limit_w:g} W" if g.power_limit_w is not None else None,
                g.pci_bus_id,
                g.uuid,
                g.state if g.error is None else f"{g.state} ({g.error})",
            )
        )
    gpus = table(
        ("GPU", "NAME", "MEMORY", "CC", "ARCH", "MIG", "POWER", "BUS ID", "UUID", "STATE"), rows
    )
    label_lines = "".join(f"  {k}={v}\n" for k, v in sorted(labels.items()))
    return f"{head}{gpus}\nLabels ({len(labels)}):\n{label_lines}"


# --- apply -------------------------------------------------------------------------------


def step_line(r: StepResult) -> str:
    """``runtime      changed       docker: changed /etc/docker/daemon.json; ...``"""
    return f"{r.step:<13}{r.status:<14}{r.detail}"


def apply_summary(outcome: Outcome) -> str:
    """``apply bootstrap: ok · 1 ok, 2 changed · 0.11 s`` (an ASCII stream shows - for the
    dots: ``cli.main._tolerant_streams``)."""
    parts = [f"{outcome.count(s)} {s}" for s in Status if outcome.count(s)]
    verdict = "failed" if outcome.failed else ("dry run" if outcome.dry_run else "ok")
    head = f"apply {outcome.phase}: {verdict}"
    if outcome.failed:
        head += f" (first failure: {outcome.failed[0].step})"
    return f"{head} · {', '.join(parts)} · {outcome.elapsed_s:.2f} s"


def runtime_line(r: StepResult) -> str:
    """``runtime configure``'s line: the runtime step's own detail (it names the engine
    and what happened), or ``runtime: skipped (why)``."""
    return f"{r.step}: {r.status} ({r.detail})" if r.status is Status.SKIPPED else r.detail


# --- check -------------------------------------------------------------------------------

# By a result's value (a Result is its value: StrEnum).
_COLOURS = {"pass": "32", "warn": "33", "fail": "31", "skip": "2"}


def check_table(report: Report, colour: bool, strict: bool = False) -> str:
    """The one-screen table: a line per probe, a fix line under each warn/fail."""
    from nodeagent.walk.check import Result

    def paint(text: str, result: Result) -> str:
        return f"\033[{_COLOURS[result]}m{text}\033[0m" if colour else text

    width = max(len(p.name) for p in report.probes) if report.probes else 4
    lines = []
    for p in report.probes:
        mark = paint(f"{p.result.value.upper():<4}", p.result)
        lines.append(f"{mark}  {p.name:<{width}}  {p.message}")
        if p.hint and p.result in (Result.WARN, Result.FAIL):
            lines.append(f"{'':4}  {'':<{width}}  fix: {p.hint}")
    counts = {r: sum(1 for p in report.probes if p.result is r) for r in Result}
    verdict = report.worst(strict)
    summary = ", ".join(f"{n} {r}" for r, n in counts.items() if n)
    lines.append(
        f"check {report.phase} on {report.node}: {paint(str(verdict), verdict)} · {summary} · "
        f"{report.elapsed_s:.2f} s"
    )
    return "\n".join(lines) + "\n"
