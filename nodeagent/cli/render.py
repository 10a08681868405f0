"""Rendering command results for people (tables) and programs (JSON, YAML).

Every human-readable form the CLI prints is made here or by the record it renders
(:meth:`StepResult.line`, :func:`nodeagent.walk.check.render`).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from nodeagent.gpu.inventory import Inventory


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
