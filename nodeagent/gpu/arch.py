"""Facts derived from a GPU's identity: architecture family and short model name."""

from __future__ import annotations

import re
from typing import Optional


def arch_family(major: Optional[int], minor: Optional[int]) -> Optional[str]:
    """Architecture family from CUDA compute capability, with the same cut points as GPU
    Feature Discovery's ``nvidia.com/gpu.family`` (k8s-device-plugin internal/lm/resource.go):
    1 tesla, 2 fermi, 3 kepler, 5 maxwell, 6 pascal, 7.<5 volta, 7.5 turing, 8.<9 ampere,
    8.9 ada-lovelace, 9 hopper, 10 and 12 blackwell, 13 rubin. None when unknown."""
    if major is None or minor is None:
        return None
    if major == 7:
        return "volta" if minor < 5 else "turing"
    if major == 8:
        return "ampere" if minor < 9 else "ada-lovelace"
    return {
        1: "tesla",
        2: "fermi",
        3: "kepler",
        5: "maxwell",
        6: "pascal",
        9: "hopper",
        10: "blackwell",
        12: "blackwell",
        13: "rubin",
    }.get(major)


# "GRID " starts a vGPU's name ("GRID T4-16Q": a T4).
_VENDOR_PREFIXES = ("NVIDIA ", "Tesla ", "Quadro ", "GeForce ", "GRID ")
# Brand words that are part of the model: "GeForce RTX 4090" -> RTX-4090, "TITAN X" -> TITAN-X,
# "RTX PRO 6000 Blackwell Server Edition" -> RTX-PRO-6000.
_BRANDED_RE = re.compile(
    r"^(?:NVIDIA\s+)?(?:GeForce\s+|Quadro\s+)?(RTX|GTX|TITAN)\s+((?:PRO\s+)?\w+)", re.IGNORECASE
)


def short_model(name: Optional[str]) -> Optional[str]:
    """The operators' short model name for the ``gpu-type`` label.

    "Tesla V100-SXM2-16GB" -> "V100", "NVIDIA A100-SXM4-80GB" -> "A100",
    "NVIDIA H100 80GB HBM3" -> "H100", "NVIDIA GeForce RTX 4090" -> "RTX-4090",
    "NVIDIA RTX A6000" -> "RTX-A6000", "NVIDIA TITAN X (Pascal)" -> "TITAN-X",
    "NVIDIA RTX PRO 6000 Blackwell Server Edition" -> "RTX-PRO-6000", "GRID T4-16Q" -> "T4".
    None when the name gives nothing usable.
    """
    if not name:
        return None
    s = name.strip()
    m = _BRANDED_RE.match(s)
    if m:
        return "-".join([m.group(1).upper(), *m.group(2).split()])
    changed = True
    while changed:
        changed = False
        for prefix in _VENDOR_PREFIXES:
            if s.startswith(prefix):
                s = s[len(prefix) :].lstrip()
                changed = True
    token = re.split(r"[\s\-_/()]+", s, maxsplit=1)[0]
    return token or None
