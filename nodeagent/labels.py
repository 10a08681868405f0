"""The node's labels: a pure function of the GPU inventory and the label config.

Three families (docs/labels.md):

* GPU Feature Discovery-compatible ``nvidia.com/*`` labels, with the values GFD gives the same
  GPU (NVIDIA/k8s-device-plugin internal/lm), except where GFD emits a value the API server
  rejects (k8s-device-plugin#514) — every value here is valid, or the label is left out;
* the conventions operators already use: ``gpu=true``, ``gpu-type=<short model>``;
* static labels from the config.

A mixed node (GPUs of more than one product) gets, in every per-GPU label, only a value that
is true of *every* healthy GPU: the product becomes ``mixed``, memory and compute capability
the minimum; per-product counts say the rest. Lost or failing GPUs are not counted.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Optional

from nodeagent.config import LabelsConfig
from nodeagent.gpu.arch import arch_family, short_model
from nodeagent.gpu.inventory import GPU, STATE_OK, Inventory

NVIDIA = "nvidia.com"
MIXED = "mixed"

# Used with fullmatch: "$" would also match before a final "\n".
_VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NAME_RE = _VALUE_RE  # a key's name part has the same shape, but must not be empty
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_GFD_DROP_RE = re.compile(r"[^A-Za-z0-9\-_. ]")

# NodeRestriction (kubernetes plugin/pkg/admission/noderestriction/admission.go, with the
# kubelet's allow-list from k8s.io/kubelet/pkg/apis/well_known_labels.go): inside the
# kubernetes.io / k8s.io namespaces a node may set only these keys and these namespaces.
_KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
    }
)
_KUBELET_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
_RESTRICTED_NAMESPACE = "node-restriction.kubernetes.io"


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
    assert _VALUE_RE.fullmatch(s), s
    return s


def value_problem(value: str) -> Optional[str]:
    """None if ``value`` is a valid label value, else why not."""
    if len(value) > 63:
        return "a label value must be at most 63 characters"
    if not _VALUE_RE.fullmatch(value):
        return (
            "a label value must be empty or alphanumeric at both ends, with only "
            "'-', '_' and '.' inside"
        )
    return None


def is_valid_value(value: str) -> bool:
    return value_problem(value) is None


def key_problem(key: str) -> Optional[str]:
    """None if ``key`` is a valid label key (qualified name), else why not."""
    prefix, slash, name = key.rpartition("/")
    if slash and not prefix:
        return "the prefix before '/' is empty"
    if not name:
        return "the name is empty"
    if len(name) > 63:
        return "the name after the prefix is longer than 63 characters"
    if not _NAME_RE.fullmatch(name):
        return "the name must be alphanumeric at both ends, with only '-', '_' and '.' inside"
    if prefix:
        if len(prefix) > 253:
            return "the prefix is longer than 253 characters"
        if not all(_DNS_LABEL_RE.fullmatch(part) for part in prefix.split(".")):
            return "the prefix must be a lower-case DNS subdomain"
    return None


def label_key_problem(key: str) -> Optional[str]:
    """None if a node may set ``key`` on itself, else a short reason.

    The key must be valid, and allowed by the NodeRestriction admission plugin, which
    refuses a node's own labels in the ``kubernetes.io`` and ``k8s.io`` namespaces outside
    the kubelet's allow-list, and every ``node-restriction.kubernetes.io/`` label.
    """
    problem = key_problem(key)
    if problem:
        return f"not a valid label key: {problem}"
    namespace = key.rpartition("/")[0]
    if _in_namespace(namespace, _RESTRICTED_NAMESPACE):
        return (
            f"a node may never set '{_RESTRICTED_NAMESPACE}/' labels on itself "
            "(NodeRestriction admission plugin)"
        )
    if _in_namespace(namespace, "kubernetes.io") or _in_namespace(namespace, "k8s.io"):
        if key in _KUBELET_LABELS or any(
            _in_namespace(namespace, ns) for ns in _KUBELET_NAMESPACES
        ):
            return None
        return (
            "a node may not set labels in the kubernetes.io/k8s.io namespaces outside the "
            "kubelet's allow-list (NodeRestriction admission plugin); use your own domain"
        )
    return None


def _in_namespace(namespace: str, ns: str) -> bool:
    return namespace == ns or namespace.endswith("." + ns)


def node_labels(inv: Inventory, cfg: LabelsConfig) -> dict[str, str]:
    """The labels this node should carry. Pure; keys sorted; every key and value valid."""
    labels: dict[str, str] = {}
    gpus = inv.healthy_gpus if inv.state == STATE_OK else ()
    if gpus:
        if cfg.gfd:
            labels.update(_gfd_labels(inv, gpus))
        if cfg.simple:
            labels.update(_simple_labels(gpus))
        labels.update(_own_labels(inv, gpus, cfg.prefix))
    # A derived value the API server would reject is left out (see the module doc); the
    # static labels need no such filter: the config refuses an invalid one when it loads.
    labels = {k: v for k, v in labels.items() if is_valid_value(v) and not key_problem(k)}
    labels.update(cfg.static)
    for key in cfg.skip:
        labels.pop(key, None)
    return dict(sorted(labels.items()))


def _products(gpus: tuple[GPU, ...]) -> Counter[str]:
    return Counter(p for p in (sanitize_value(g.name) for g in gpus) if p)


def _min_compute(gpus: tuple[GPU, ...]) -> Optional[tuple[int, int]]:
    ccs = [
        (g.compute_major, g.compute_minor)
        for g in gpus
        if g.compute_major is not None and g.compute_minor is not None
    ]
    if len(ccs) != len(gpus):
        return None  # some GPU did not say: no value is true of all of them
    return min(ccs) if ccs else None


def _gfd_labels(inv: Inventory, gpus: tuple[GPU, ...]) -> dict[str, str]:
    out: dict[str, str] = {f"{NVIDIA}/gpu.present": "true", f"{NVIDIA}/gpu.count": str(len(gpus))}
    products = _products(gpus)
    if len(products) == 1 and sum(products.values()) == len(gpus):
        out[f"{NVIDIA}/gpu.product"] = next(iter(products))
    elif products:
        out[f"{NVIDIA}/gpu.product"] = MIXED
    mems = [g.memory_total_mib for g in gpus]
    if all(m is not None for m in mems):
        out[f"{NVIDIA}/gpu.memory"] = str(min(m for m in mems if m is not None))
    cc = _min_compute(gpus)
    if cc is not None:
        out[f"{NVIDIA}/gpu.compute.major"] = str(cc[0])
        out[f"{NVIDIA}/gpu.compute.minor"] = str(cc[1])
        out[f"{NVIDIA}/gpu.family"] = arch_family(*cc) or "undefined"
    out.update(_driver_labels(inv.driver_version))
    out.update(_cuda_labels(inv.cuda_driver_version))
    out[f"{NVIDIA}/mig.capable"] = "true" if any(g.mig_capable for g in gpus) else "false"
    out[f"{NVIDIA}/gpu.machine"] = sanitize_value(inv.machine) or "unknown"
    return out


def _driver_labels(version: Optional[str]) -> dict[str, str]:
    # GFD splits the NVML driver version "MAJOR.MINOR[.REV]" keeping leading zeros ("02").
    if not version:
        return {}
    parts = version.split(".")
    if len(parts) < 2 or not all(p.isdigit() for p in parts) or len(parts) > 3:
        return {}
    major, minor = parts[0], parts[1]
    rev = parts[2] if len(parts) == 3 else ""
    return {
        f"{NVIDIA}/cuda.driver-version.major": major,
        f"{NVIDIA}/cuda.driver-version.minor": minor,
        f"{NVIDIA}/cuda.driver-version.revision": rev,
        f"{NVIDIA}/cuda.driver-version.full": version,
        f"{NVIDIA}/cuda.driver.major": major,
        f"{NVIDIA}/cuda.driver.minor": minor,
        f"{NVIDIA}/cuda.driver.rev": rev,
    }


def _cuda_labels(version: Optional[str]) -> dict[str, str]:
    # The CUDA version the driver supports (nvmlSystemGetCudaDriverVersion), "12.4".
    if not version:
        return {}
    major, dot, minor = version.partition(".")
    if not (dot and major.isdigit() and minor.isdigit()):
        return {}
    return {
        f"{NVIDIA}/cuda.runtime-version.major": major,
        f"{NVIDIA}/cuda.runtime-version.minor": minor,
        f"{NVIDIA}/cuda.runtime-version.full": version,
        f"{NVIDIA}/cuda.runtime.major": major,
        f"{NVIDIA}/cuda.runtime.minor": minor,
    }


def _simple_labels(gpus: tuple[GPU, ...]) -> dict[str, str]:
    out = {"gpu": "true"}
    models = {sanitize_value(short_model(g.name)) for g in gpus}
    if len(models) == 1 and None not in models:
        (model,) = models
        assert model is not None
        out["gpu-type"] = model
    else:
        out["gpu-type"] = MIXED
    return out


def _own_labels(inv: Inventory, gpus: tuple[GPU, ...], prefix: str) -> dict[str, str]:
    out: dict[str, str] = {}
    products = _products(gpus)
    if len(products) > 1:
        out[f"{prefix}/gpu.mixed"] = "true"
        for product, count in products.items():
            name = sanitize_value(f"gpu.count.{product}"[:63])
            if name:
                out[f"{prefix}/{name}"] = str(count)
    unhealthy = len(inv.gpus) - len(gpus)
    if unhealthy:
        out[f"{prefix}/gpu.unhealthy"] = str(unhealthy)
    mig = Counter(
        m.profile for g in gpus for m in g.mig_devices if m.profile and sanitize_value(m.profile)
    )
    if mig:
        out[f"{prefix}/mig.enabled"] = "true"
        for profile, count in mig.items():
            out[f"{prefix}/mig-{sanitize_value(profile)}.count"] = str(count)
    return out
