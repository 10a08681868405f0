"""Making a valid label value out of what NVML says (GPU Feature Discovery's rule, plus what
the API server demands and GFD does not check). Pure."""

from __future__ import annotations

import re
from typing import Optional

from nodeagent.kube.keys import VALUE_RE

NVIDIA = "nvidia.com"
MIXED = "mixed"  # the value of a per-GPU label on a node whose GPUs disagree

_GFD_DROP_RE = re.compile(r"[^A-Za-z0-9\-_. ]")


def sanitize_value(raw: Optional[str]) -> Optional[str]:
    """A valid Kubernetes label value made from ``raw``, or None if nothing usable remains.

    GFD's rule first (drop characters outside ``[A-Za-z0-9-_. ]``, join whitespace runs
    with ``-``), then what the API server also demands and GFD does not check: at most 63
    characters, alphanumeric at both ends.
    """
    if raw is None:
        return None
    s = "-".join(_GFD_DROP_RE.sub("", raw).split())
    s = s[:63]
    s = s.strip("-_.")
    if not s:
        return None
    assert VALUE_RE.fullmatch(s), s
    return s
