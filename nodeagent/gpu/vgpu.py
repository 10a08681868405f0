"""A vGPU guest's host driver (the hypervisor's NVIDIA vGPU manager), for GPU Feature
Discovery's ``nvidia.com/vgpu.host-driver-{version,branch}`` labels.

NVML inside a guest has no call for the host's driver (``nvmlDeviceGetVgpuMetadata`` and
``nvmlVgpuInstanceGetMetadata`` answer on the hypervisor only), so this reads what GFD reads
(k8s-device-plugin ``internal/vgpu``): the vGPU's PCI configuration space, whose
vendor-specific capability (id 0x09) carries the signature ``VF`` and, in its record 0,
10 bytes of host driver version and 10 of branch. Holds the pure parser and the one read of
``/sys/bus/pci/devices/<address>/config`` (through :mod:`nodeagent.host.reader`); it may
not call NVML, and a config space it cannot read or parse leaves the fields None.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

from nodeagent.errors import InputError, StepFailed
from nodeagent.gpu.inventory import GPU, Inventory, VirtualizationMode
from nodeagent.host.paths import HostRoot
from nodeagent.log import get_logger

log = get_logger(__name__)

# PCI configuration space (PCI Local Bus Specification 3.0, 6.7): the status register's
# "capabilities list" bit, the pointer to the first capability, the vendor-specific id.
_STATUS = 0x06
_HAS_CAPABILITIES = 0x10
_FIRST_CAPABILITY = 0x34
_VENDOR_SPECIFIC = 0x09
_BROKEN = 0xFF
# NVIDIA's vGPU capability: "VF" at offset 3, records from offset 5 (id, length, data).
_SIGNATURE = b"VF"
_RECORDS = 5
_HOST_DRIVER_RECORD = 0
_FIELD = 10  # bytes of version, then of branch, NUL padded


def vendor_capability(config: bytes) -> Optional[bytes]:
    """The vendor-specific capability of a PCI configuration space (the whole 256 bytes a
    privileged reader sees; an unprivileged one gets 64), or None."""
    if len(config) < 256 or not config[_STATUS] & _HAS_CAPABILITIES:
        return None
    pos = config[_FIRST_CAPABILITY]
    seen: set[int] = set()
    while pos and pos not in seen and pos + 2 < len(config):
        seen.add(pos)  # a looping chain ends here
        cap_id, following, length = config[pos], config[pos + 1], config[pos + 2]
        if cap_id == _BROKEN:
            return None
        if cap_id == _VENDOR_SPECIFIC:
            return config[pos : pos + length]
        pos = following
    return None


def host_driver(config: bytes) -> Optional[tuple[str, str]]:
    """(host driver version, branch) from a vGPU's PCI configuration space, e.g.
    ("460.16", "r460_00"); None when it is not a vGPU or carries no such record."""
    cap = vendor_capability(config)
    if cap is None or len(cap) < _RECORDS or cap[3:5] != _SIGNATURE:
        return None
    pos = _RECORDS
    while pos + 1 < len(cap) and cap[pos] != _HOST_DRIVER_RECORD:
        step = cap[pos + 1]
        if step == 0:
            return None  # a zero-length record would never end
        pos += step
    data = pos + 2
    if pos >= len(cap) or cap[pos] != _HOST_DRIVER_RECORD or data + 2 * _FIELD > len(cap):
        return None
    version = cap[data : data + _FIELD].strip(b"\0").decode("ascii", "replace")
    branch = cap[data + _FIELD : data + 2 * _FIELD].strip(b"\0").decode("ascii", "replace")
    return version, branch


def sysfs_address(bus_id: str) -> Optional[str]:
    """NVML's bus id ("00000000:00:1E.0") as sysfs names the device ("0000:00:1e.0")."""
    domain, sep, rest = bus_id.partition(":")
    try:
        return f"{int(domain, 16):04x}:{rest.lower()}" if sep and rest else None
    except ValueError:
        return None


def with_host_driver(inv: Inventory, root: HostRoot) -> Inventory:
    """``inv`` with each vGPU guest GPU's host driver read from its PCI config space."""
    gpus = tuple(_read(g, root) for g in inv.gpus)
    return dataclasses.replace(inv, gpus=gpus) if gpus != inv.gpus else inv


def _read(g: GPU, root: HostRoot) -> GPU:
    from nodeagent.host.reader import read_bytes

    if g.virtualization_mode != VirtualizationMode.VGPU or not g.pci_bus_id:
        return g
    address = sysfs_address(g.pci_bus_id)
    if address is None:
        return g
    shown = f"/sys/bus/pci/devices/{address}/config"
    try:
        config = read_bytes(root.path(shown), shown, max_bytes=4096)
    except (InputError, StepFailed) as e:
        log.warning("vgpu.config_unreadable", index=g.index, error=str(e))
        return g
    found = host_driver(config) if config else None
    if found is None:
        return g
    return dataclasses.replace(
        g, vgpu_host_driver_version=found[0], vgpu_host_driver_branch=found[1]
    )
