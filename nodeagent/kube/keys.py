"""Label key and value rules: what the API server accepts, and what NodeRestriction lets a
node set on itself. Pure, stdlib only, so the config (which refuses a bad key when it loads)
and the label families share one definition without depending on each other.
"""

from __future__ import annotations

import re
from typing import Optional

# Used with fullmatch: "$" would also match before a final "\n".
VALUE_RE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?")
_NAME_RE = VALUE_RE  # a key's name part has the same shape, but must not be empty
_DNS_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")

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


def value_problem(value: str) -> Optional[str]:
    """None if ``value`` is a valid label value, else why not."""
    if len(value) > 63:
        return "a label value must be at most 63 characters"
    if not VALUE_RE.fullmatch(value):
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
