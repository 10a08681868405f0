"""Which NVIDIA XIDs make a GPU unhealthy: a fixed list with its sources, and the operator's
additions and removals on top of it.

An XID is the number the NVIDIA driver logs (and NVML reports as an
``nvmlEventTypeXidCriticalError`` event) when something went wrong on a GPU. Most are the fault
of one program (an illegal memory access is XID 13 or 31); some mean the GPU itself needs a
reset, the node a reboot, or the hardware a replacement. :data:`CRITICAL_XIDS` is the second
kind: every XID in it is one that a production node-health tool fails the GPU or the node on,
or that NVIDIA's own catalog answers with a GPU reset or more. :data:`APPLICATION_XIDS` is the
first kind, as NVIDIA's Kubernetes device plugin skips them. An XID in neither list is reported
but is not critical. docs/xid.md has the per-XID table.

Sources (read 2026; the lists differ, and the differences are documented in docs/xid.md):

- NVIDIA, "Analyzing Xid Errors with the Xid Catalog" (Ampere and newer; per-XID immediate
  action RESET_GPU / RESTART_BM / RESTART_APP / IGNORE ...):
  https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html
  (read through its machine-readable mirror, leptonai/gpud
  components/accelerator/nvidia/xid/catalog_generated.go, generated 2025-10-29)
- NVIDIA, XID list for older GPUs (descriptions of XIDs unused since Ampere):
  https://docs.nvidia.com/deploy/xid-errors/index.html
- NVIDIA, Dynamic Page Retirement (XID 48/63/64 before Ampere):
  https://docs.nvidia.com/deploy/dynamic-page-retirement/visibility.html
- NVIDIA k8s-device-plugin health check (application XIDs 13, 31, 43, 45, 68, 109 are
  skipped; every other XID marks the device Unhealthy; ``DP_DISABLE_HEALTHCHECKS`` /
  ``DP_ENABLE_HEALTHCHECKS`` adjust it):
  https://github.com/NVIDIA/k8s-device-plugin/blob/main/internal/rm/health.go
- AWS EKS node monitoring agent, ``WellKnownXidCodes`` (a fatal ``AcceleratedHardwareReady``
  condition, used by EKS node auto repair):
  https://github.com/aws/eks-node-monitoring-agent/blob/main/monitors/nvidia/dcgm/dcgm_policies.go
- Azure HPC node health checks, ``check_gpu_xid`` (fails the node, FaultCode NHC2001):
  https://github.com/Azure/azurehpc-health-checks/blob/main/customTests/azure_gpu_xid.nhc
- Modal, GPU health ("fell off the bus", XID 79, drains the worker):
  https://modal.com/docs/guide/gpu-health
"""

from __future__ import annotations

from collections.abc import Iterable

# Caused by the program running on the GPU; the GPU is fine for the next one. Exactly the list
# NVIDIA's k8s-device-plugin skips (internal/rm/health.go, "Application errors: the GPU should
# still be healthy"). 109 is disputed: NVIDIA's catalog says RESET_GPU and the EKS agent treats
# it as fatal; add it with daemon.xid_extra_critical to follow them.
APPLICATION_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})

# Each XID with the sources that make it critical (NV: NVIDIA catalog immediate action;
# EKS: WellKnownXidCodes; AZ: Azure NHC check_gpu_xid; DP: k8s-device-plugin, which treats
# every non-application XID as critical). docs/xid.md has the same table.
CRITICAL_XIDS: frozenset[int] = frozenset(
    {
        46,  # GPU stopped processing - NV RESET_GPU, EKS
        48,  # double-bit ECC error - NV WORKFLOW_XID_48, EKS, AZ
        54,  # auxiliary power not connected - NV CHECK_MECHANICALS, EKS
        56,  # display engine error (pre-Ampere) - AZ
        57,  # error programming video memory interface (pre-Ampere) - AZ
        58,  # unstable video memory interface (pre-Ampere) - AZ
        62,  # internal micro-controller halt - NV RESET_GPU, EKS, AZ
        63,  # row remapping / page retirement event - EKS (EC2: replace), AZ; NV: IGNORE
        64,  # row remapping / page retirement failure - NV RESET_GPU, EKS, AZ
        65,  # video processor exception (pre-Ampere) - AZ
        69,  # graphics engine class error - AZ, DP; NV: RESTART_APP
        73,  # NVENC2 error (pre-Ampere) - AZ
        74,  # NVLink error - NV WORKFLOW_NVLINK_ERR, EKS, AZ
        79,  # GPU has fallen off the bus - NV RESTART_BM, EKS, AZ, Modal
        80,  # corrupted data sent to GPU - AZ, DP; NV: RESTART_APP
        81,  # VGA subsystem error (pre-Ampere) - AZ
        92,  # high single-bit ECC error rate - AZ, DP; NV: IGNORE
        94,  # contained memory error - DP; NV: RESTART_APP
        95,  # uncontained memory error - NV RESET_GPU, EKS
        110,  # security fault - NV RESET_GPU, EKS
        119,  # GSP RPC timeout - NV RESET_GPU, EKS, AZ
        120,  # GSP error - NV RESET_GPU, EKS, AZ
        136,  # link training failed - NV RESET_GPU, EKS
        140,  # ECC unrecovered error - NV RESET_GPU, EKS
        142,  # NVENC3 error - NV CONTACT_SUPPORT, EKS
        143,  # GPU initialization error - NV RESET_GPU, EKS
        151,  # key rotation error - NV RESTART_VM, EKS
        155,  # NVLink SW defined error - NV RESET_GPU, EKS
        156,  # resource retirement event - NV RESET_GPU, EKS
        158,  # GPU fatal timeout - NV RESET_GPU, EKS
    }
)

# Short meanings: NVIDIA's catalog descriptions (Ampere and newer), and the older XID list's
# for the XIDs the catalog marks unused.
_DESCRIPTIONS: dict[int, str] = {
    13: "Graphics engine exception",
    31: "GPU memory page fault",
    43: "GPU stopped processing",
    45: "Preemptive cleanup, due to previous errors",
    46: "GPU stopped processing",
    48: "Double bit ECC error",
    54: "Auxiliary power is not connected to the GPU board",
    56: "Display engine error",
    57: "Error programming video memory interface",
    58: "Unstable video memory interface detected",
    62: "Internal micro-controller halt",
    63: "GPU memory remapping event",
    64: "GPU memory remapping failure",
    65: "Video processor exception",
    68: "NVDEC0 exception",
    69: "Graphics engine class error",
    73: "NVENC2 error",
    74: "NVLink error",
    79: "GPU has fallen off the bus",
    80: "Corrupted data sent to GPU",
    81: "VGA subsystem error",
    92: "High single-bit ECC error rate",
    94: "Contained memory error",
    95: "Uncontained memory error",
    109: "Context switch timeout error",
    110: "Security fault error",
    119: "GSP RPC timeout",
    120: "GSP error",
    121: "C2C error",
    136: "Link training failed",
    140: "ECC unrecovered error",
    142: "NVENC3 error",
    143: "GPU initialization error",
    144: "NVLink: SAW error",
    145: "NVLink: RLW error",
    146: "NVLink: TLW error",
    147: "NVLink: TREX error",
    148: "NVLink: NVLPW_CTRL error",
    149: "NVLink: NETIR error",
    150: "NVLink: MSE error",
    151: "Key rotation error",
    154: "GPU recovery action changed",
    155: "NVLink SW defined error",
    156: "Resource retirement event",
    158: "GPU fatal timeout",
}


def describe(xid: int) -> str:
    """A short meaning of ``xid`` ("GPU has fallen off the bus" for 79); "XID <n>" when it is
    not one this module knows."""
    return _DESCRIPTIONS.get(xid, f"XID {xid}")


def is_critical(xid: int, extra: Iterable[int] = (), ignore: Iterable[int] = ()) -> bool:
    """Whether ``xid`` makes its GPU unhealthy.

    ``extra`` are XIDs the operator adds (config ``daemon.xid_extra_critical``), ``ignore``
    XIDs the operator removes (``daemon.xid_ignore``); an XID in both is ignored. Everything
    else follows :data:`CRITICAL_XIDS`.
    """
    if xid in frozenset(ignore):
        return False
    return xid in CRITICAL_XIDS or xid in frozenset(extra)
