"""GPU Feature Discovery's MIG strategy labels (``labels.mig_strategy``, which must match the
device plugin's ``--mig-strategy``), with GFD's values (k8s-device-plugin
``internal/lm/mig-strategy.go``, ``resource.go``). Pure: a function of the healthy GPUs.

- ``single``: the node's ``nvidia.com/gpu`` resources are MIG devices, so ``gpu.product``,
  ``gpu.count`` and ``gpu.memory`` describe the MIG device and ``gpu.multiprocessors``,
  ``gpu.slices.{gi,ci}``, ``gpu.engines.*`` are added; a node single cannot describe (a MIG
  GPU with no MIG device, MIG and full GPUs together, two profiles) gets GFD's guard
  ``<model>-MIG-INVALID`` with count and memory 0, so no pod selects it by product.
- ``mixed``: ``nvidia.com/mig-<profile>.{product,count,memory,multiprocessors,slices.*,
  engines.*}`` per profile (``1g.10gb+me`` is ``1g.10gb.me``, as GFD names it).

Where NVML gave no attribute the key is left out; where MIG devices of one profile disagree
(another GPU model) the value is the smallest, true of each (docs/labels.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Optional

from nodeagent.gpu.inventory import GPU, MigDevice
from nodeagent.labels.values import MIXED, NVIDIA, sanitize_value

NONE, SINGLE, STRATEGY_MIXED = "none", "single", "mixed"


def resource_name(profile: str) -> str:
    """GFD's name of a MIG profile: its ``+`` options joined with ``.`` (``1g.10gb.me``)."""
    return profile.replace("+", ".")


def _smallest(values: Iterable[Optional[int]]) -> Optional[int]:
    found = list(values)
    if not found or any(v is None for v in found):
        return None
    return min(v for v in found if v is not None)


def _attributes(devices: list[MigDevice]) -> dict[str, str]:
    """GFD's attribute suffixes of one MIG profile (``memory``, ``multiprocessors``, …)."""
    memory = _smallest(
        m.memory_size_mb if m.memory_size_mb is not None else m.memory_total_mib for m in devices
    )
    numbers = {
        "multiprocessors": _smallest(m.multiprocessor_count for m in devices),
        "slices.gi": _smallest(m.gpu_instance_slices for m in devices),
        "slices.ci": _smallest(m.compute_instance_slices for m in devices),
        "engines.copy": _smallest(m.shared_copy_engines for m in devices),
        "engines.decoder": _smallest(m.shared_decoders for m in devices),
        "engines.encoder": _smallest(m.shared_encoders for m in devices),
        "engines.jpeg": _smallest(m.shared_jpegs for m in devices),
        "engines.ofa": _smallest(m.shared_ofas for m in devices),
    }
    out = {k: str(v) for k, v in numbers.items() if v is not None}
    if memory:  # 0 is NVML saying nothing: left out, as GFD leaves out a 0 memory
        out["memory"] = str(memory)
    return out


def _model(gpus: Iterable[GPU]) -> str:
    """The product the MIG devices are cut from (GFD's parent name); ``mixed`` when the
    GPUs they come from are not one product."""
    names = {sanitize_value(g.name) for g in gpus}
    if len(names) == 1 and None not in names:
        return str(names.pop())
    return MIXED


def _product(model: str, profile: str) -> Optional[str]:
    if model == MIXED:
        return MIXED
    return sanitize_value(f"{model}-MIG-{profile}")


def _by_profile(gpus: tuple[GPU, ...]) -> dict[Optional[str], list[tuple[GPU, MigDevice]]]:
    found: dict[Optional[str], list[tuple[GPU, MigDevice]]] = {}
    for g in gpus:
        for m in g.mig_devices:
            key = resource_name(m.profile) if m.profile else None
            found.setdefault(key, []).append((g, m))
    return found


def _enabled(g: GPU) -> bool:
    return g.mig_mode_current == "enabled"


def single(gpus: tuple[GPU, ...]) -> dict[str, str]:
    """The ``single`` strategy's overrides of the ``gpu.*`` labels."""
    enabled = [g for g in gpus if _enabled(g)]
    if not enabled:
        return {}  # no MIG: the full GPUs are the resources, as with "none"
    profiles = _by_profile(tuple(enabled))
    valid = (
        all(g.mig_devices for g in enabled)
        and len(enabled) == len(gpus)
        and len(profiles) == 1
        and None not in profiles
    )
    if not valid:
        return {
            f"{NVIDIA}/gpu.product": _product(_model(enabled), "INVALID") or MIXED,
            f"{NVIDIA}/gpu.count": "0",
            f"{NVIDIA}/gpu.memory": "0",
        }
    ((profile, pairs),) = profiles.items()
    assert profile is not None
    out = {f"{NVIDIA}/gpu.count": str(len(pairs))}
    product = _product(_model(g for g, _ in pairs), profile)
    if product:
        out[f"{NVIDIA}/gpu.product"] = product
    out.update({f"{NVIDIA}/gpu.{k}": v for k, v in _attributes([m for _, m in pairs]).items()})
    return out


def mixed(gpus: tuple[GPU, ...]) -> dict[str, str]:
    """The ``mixed`` strategy's per-profile labels (MIG GPUs without devices are ignored)."""
    out: dict[str, str] = {}
    for profile, pairs in _by_profile(tuple(g for g in gpus if _enabled(g))).items():
        if profile is None:
            continue  # a MIG device whose profile NVML's name does not give
        key = f"{NVIDIA}/mig-{profile}"
        out[f"{key}.count"] = str(len(pairs))
        product = _product(_model(g for g, _ in pairs), profile)
        if product:
            out[f"{key}.product"] = product
        out.update({f"{key}.{k}": v for k, v in _attributes([m for _, m in pairs]).items()})
    return out


def labels(gpus: tuple[GPU, ...], strategy: str) -> dict[str, str]:
    """``nvidia.com/mig.strategy`` and the strategy's labels; nothing for ``none``."""
    if strategy == NONE:
        return {}
    out = {f"{NVIDIA}/mig.strategy": strategy}
    out.update(single(gpus) if strategy == SINGLE else mixed(gpus))
    return out
