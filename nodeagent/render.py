"""Human-readable views of command results (the table forms)."""

from __future__ import annotations

from nodeagent.gpu.inventory import Inventory
from nodeagent.output import table


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
