"""vGPU guests: GPU Feature Discovery's ``nvidia.com/vgpu.*`` labels (k8s-device-plugin
``internal/lm/vgpu.go``) and the vGPU profile (``16Q`` of ``GRID T4-16Q``) under the agent's
own prefix. Pure: a function of the healthy GPUs; it may not read the host.

``vgpu.present`` comes from ``nvmlDeviceGetVirtualizationMode`` (GFD looks for the vGPU
signature in PCI config space; both say the same of a guest) and is left out when NVML did
not say. The host driver's version and branch come from the vGPU's PCI config space
(:mod:`nodeagent.gpu.vgpu`), as GFD reads them.
"""

from __future__ import annotations

import re
from typing import Optional

from nodeagent.gpu.inventory import GPU, VirtualizationMode
from nodeagent.labels.values import MIXED, NVIDIA, sanitize_value

# A vGPU type's name ends in its profile: framebuffer GB and series letter (A apps, B virtual
# PC, C compute, Q workstation), a MIG-backed type has the slice count first, and some B
# types carry a display count: "GRID T4-16Q", "GRID T4-2B4", "NVIDIA A100-4-20C".
_PROFILE_RE = re.compile(r"-((?:\d+-)?\d+[ABCQ]\d?)$")


def is_guest(g: GPU) -> bool:
    return g.virtualization_mode == VirtualizationMode.VGPU


def profile(name: Optional[str]) -> Optional[str]:
    """The vGPU profile in a vGPU's product name ("GRID T4-16Q" -> "16Q"), or None."""
    m = _PROFILE_RE.search(name.strip()) if name else None
    return m.group(1) if m else None


def _agreed(values: set[Optional[str]]) -> Optional[str]:
    """The one value every GPU gave, valid as a label value; None otherwise."""
    return sanitize_value(values.pop()) if len(values) == 1 else None


def gfd_labels(gpus: tuple[GPU, ...]) -> dict[str, str]:
    """``nvidia.com/vgpu.present`` and, on a guest, the host driver's version and branch."""
    modes = [g.virtualization_mode for g in gpus]
    guests = [g for g in gpus if is_guest(g)]
    out: dict[str, str] = {}
    if guests:
        out[f"{NVIDIA}/vgpu.present"] = "true"
    elif modes and None not in modes:
        out[f"{NVIDIA}/vgpu.present"] = "false"
    version = _agreed({g.vgpu_host_driver_version for g in guests})
    branch = _agreed({g.vgpu_host_driver_branch for g in guests})
    if version:
        out[f"{NVIDIA}/vgpu.host-driver-version"] = version
    if branch:
        out[f"{NVIDIA}/vgpu.host-driver-branch"] = branch
    return out


def own_labels(gpus: tuple[GPU, ...], prefix: str) -> dict[str, str]:
    """``<prefix>/vgpu.profile`` on a guest: the profile every vGPU has, else ``mixed``."""
    guests = [g for g in gpus if is_guest(g)]
    if not guests:
        return {}
    profiles = {profile(g.name) for g in guests}
    if profiles == {None}:
        return {}  # no profile in the names: nothing to say
    value = _agreed(profiles) if len(guests) == len(gpus) else None
    return {f"{prefix}/vgpu.profile": value or MIXED}
