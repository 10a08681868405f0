"""Authorization (RBAC-style rules + the Node authorizer) and the NodeRestriction admission plugin.

* ``system:masters`` may do anything;
* every authenticated user may read discovery (``system:discovery``/``system:basic-user``);
* node identities (user ``system:node:<name>`` in group ``system:nodes``) get the
  ``system:node`` rules for nodes and events; NodeRestriction then limits writes to the
  node's own object, its taints and the labels it may touch
  (``plugin/pkg/admission/noderestriction``, ``k8s.io/kubelet/pkg/apis/well_known_labels.go``);
* ``nodeagent-controller`` may get/list/watch/patch nodes and create/patch events;
* :meth:`Authorizer.grant` adds rules for other users.

Denials are worded like ``responsewriters.ForbiddenStatusError`` and ``admission.NewForbidden``.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterable, Sequence
from typing import Any, Optional

from .status import forbidden

MASTERS = "system:masters"
NODES_GROUP = "system:nodes"
NODE_USER_PREFIX = "system:node:"
CONTROLLER_USER = "nodeagent-controller"

DISCOVERY_PREFIXES = ("/api", "/apis", "/openapi", "/version")
HEALTH_PATHS = ("/healthz", "/livez", "/readyz")

KUBELET_LABELS = frozenset(
    {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
        "topology.kubernetes.io/region",
        "failure-domain.beta.kubernetes.io/zone",
        "failure-domain.beta.kubernetes.io/region",
        "beta.kubernetes.io/instance-type",
        "node.kubernetes.io/instance-type",
        "kubernetes.io/os",
        "kubernetes.io/arch",
        "beta.kubernetes.io/os",
        "beta.kubernetes.io/arch",
    }
)
KUBELET_LABEL_NAMESPACES = ("kubelet.kubernetes.io", "node.kubernetes.io")
NODE_RESTRICTION_NAMESPACE = "node-restriction.kubernetes.io"


@dataclasses.dataclass(frozen=True)
class User:
    """An authenticated identity."""

    name: str
    groups: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Rule:
    """An RBAC policy rule over core-group resources (``*`` matches any)."""

    verbs: frozenset[str]
    resources: frozenset[str]

    def allows(self, verb: str, resource: str) -> bool:
        return ("*" in self.verbs or verb in self.verbs) and (
            "*" in self.resources or resource in self.resources
        )


def rule(verbs: Iterable[str], resources: Iterable[str]) -> Rule:
    return Rule(frozenset(verbs), frozenset(resources))


# The parts of bootstrappolicy.NodeRules() that concern the served resources.
NODE_RULES = (
    rule(["create", "get", "list", "watch"], ["nodes"]),
    rule(["update", "patch"], ["nodes/status"]),
    rule(["update", "patch", "delete"], ["nodes"]),
    rule(["create", "update", "patch"], ["events"]),
)
CONTROLLER_RULES = (
    rule(["get", "list", "watch", "patch"], ["nodes"]),
    rule(["create", "patch"], ["events"]),
)


@dataclasses.dataclass(frozen=True)
class Attributes:
    """What is being asked: ``authorizer.Attributes``."""

    user: User
    verb: str
    path: str
    resource: str = ""
    subresource: str = ""
    name: str = ""
    namespace: str = ""

    @property
    def is_resource_request(self) -> bool:
        return bool(self.resource)

    @property
    def full_resource(self) -> str:
        return f"{self.resource}/{self.subresource}" if self.subresource else self.resource


def node_name(user: Optional[User]) -> Optional[str]:
    """The node a user is, per ``nodeidentifier``: ``system:node:<name>`` in ``system:nodes``."""
    if user and NODES_GROUP in user.groups and user.name.startswith(NODE_USER_PREFIX):
        return user.name[len(NODE_USER_PREFIX) :] or None
    return None


def _is_discovery(path: str) -> bool:
    return path in HEALTH_PATHS or any(
        path == p or path.startswith(p + "/") for p in DISCOVERY_PREFIXES
    )


class Authorizer:
    """Decides requests; extra per-user rules can be granted at runtime."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._grants: dict[str, list[Rule]] = {CONTROLLER_USER: list(CONTROLLER_RULES)}

    def grant(self, user: str, resources: Sequence[str], verbs: Sequence[str]) -> None:
        """Let ``user`` do ``verbs`` on ``resources`` (``nodes``, ``nodes/status``, ``events``)."""
        with self._lock:
            self._grants.setdefault(user, []).append(rule(verbs, resources))

    def _rules(self, user: User) -> list[Rule]:
        with self._lock:
            rules = list(self._grants.get(user.name, ()))
        if node_name(user):
            rules.extend(NODE_RULES)
        return rules

    def check(self, a: Attributes) -> None:
        """Raise the 403 a real server gives, or return if allowed."""
        if MASTERS in a.user.groups:
            return
        if not a.is_resource_request:
            if _is_discovery(a.path):
                return
            raise forbidden("", "", f'User "{a.user.name}" cannot {a.verb} path "{a.path}"')
        if any(r.allows(a.verb, a.full_resource) for r in self._rules(a.user)):
            return
        scope = f'in the namespace "{a.namespace}"' if a.namespace else "at the cluster scope"
        raise forbidden(
            a.resource,
            a.name,
            f'User "{a.user.name}" cannot {a.verb} resource "{a.full_resource}" '
            f'in API group "" {scope}',
        )


# --- NodeRestriction -----------------------------------------------------------------------


def _label_namespace(key: str) -> str:
    head, sep, _ = key.partition("/")
    return head if sep else ""


def _in_domain(namespace: str, domain: str) -> bool:
    return namespace == domain or namespace.endswith("." + domain)


def is_kubelet_label(key: str) -> bool:
    """``kubeletapis.IsKubeletLabel``: labels a kubelet may set on its own Node."""
    if key in KUBELET_LABELS:
        return True
    ns = _label_namespace(key)
    return any(_in_domain(ns, allowed) for allowed in KUBELET_LABEL_NAMESPACES)


def forbidden_labels(modified: Iterable[str]) -> list[str]:
    """``getForbiddenLabels``: sorted keys a node may not add, change or remove."""
    out = set()
    for key in modified:
        ns = _label_namespace(key)
        if _in_domain(ns, NODE_RESTRICTION_NAMESPACE):
            out.add(key)
        if (_in_domain(ns, "kubernetes.io") or _in_domain(ns, "k8s.io")) and not is_kubelet_label(
            key
        ):
            out.add(key)
    return sorted(out)


def modified_labels(new: dict[str, str], old: dict[str, str]) -> set[str]:
    return {k for k in set(new) | set(old) if new.get(k) != old.get(k) or (k in new) != (k in old)}


def admit_node(
    user: Optional[User],
    operation: str,
    name: str,
    new: Optional[dict[str, Any]],
    old: Optional[dict[str, Any]],
) -> None:
    """NodeRestriction's ``admitNode`` for CREATE/UPDATE/DELETE on nodes (any subresource)."""
    me = node_name(user)
    if me is None:
        return
    if name != me:
        raise forbidden("nodes", name, f'node "{me}" is not allowed to modify node "{name}"')
    new_spec = (new or {}).get("spec") or {}
    old_spec = (old or {}).get("spec") or {}
    new_labels = ((new or {}).get("metadata") or {}).get("labels") or {}
    old_labels = ((old or {}).get("metadata") or {}).get("labels") or {}
    if operation == "CREATE":
        if new_spec.get("configSource") is not None:
            raise forbidden(
                "nodes",
                name,
                f'node "{me}" is not allowed to create pods with a non-nil configSource',
            )
        bad = forbidden_labels(modified_labels(new_labels, {}))
        if bad:
            raise forbidden(
                "nodes",
                name,
                f'node "{me}" is not allowed to set the following labels: {", ".join(bad)}',
            )
    elif operation == "UPDATE":
        source = new_spec.get("configSource")
        if source is not None and source != old_spec.get("configSource"):
            raise forbidden(
                "nodes",
                name,
                f'node "{me}" is not allowed to update configSource to a new non-nil configSource',
            )
        if (new_spec.get("taints") or []) != (old_spec.get("taints") or []):
            raise forbidden("nodes", name, f'node "{me}" is not allowed to modify taints')
        bad = forbidden_labels(modified_labels(new_labels, old_labels))
        if bad:
            raise forbidden("nodes", name, f"is not allowed to modify labels: {', '.join(bad)}")


__all__ = [
    "Attributes",
    "Authorizer",
    "User",
    "admit_node",
    "forbidden_labels",
    "is_kubelet_label",
    "node_name",
]
