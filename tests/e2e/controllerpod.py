"""The controller as a pod of deploy/controller.yaml on the e2e machine's real kubelet (issue 14,
item 2): its image built and loaded, its manifests applied, its pod and logs read.

deploy/controller.yaml is applied as written (Namespace, ServiceAccount, ClusterRole,
ClusterRoleBinding, ConfigMap, Deployment), with only what this single-node machine needs,
each marked ``e2e:`` where :func:`manifests` makes it:

* **the image**: packaging/image.py builds it under the Deployment's own name
  (``registry.example.com/nodeagent:0.1.0``) and the machine's docker loads it, so the
  kubelet finds it (a non-``latest`` tag: ``IfNotPresent``) and nothing is pulled; the
  manifest's ``image`` is unchanged;
* **hostNetwork: true**: no CNI and no kube-proxy here, so the pod shares the machine's
  network, where the API server listens on 127.0.0.1;
* **KUBERNETES_SERVICE_HOST=127.0.0.1, KUBERNETES_SERVICE_PORT=<the API server's port>**: the
  kubernetes client's in-cluster config (``load_incluster_config``) reads exactly these two;
  the kubelet's own values (the ``kubernetes`` Service's ClusterIP) lead nowhere without
  kube-proxy, and a container's ``env`` wins over them. The serving certificate has the SAN
  127.0.0.1, so TLS verifies against the mounted ``ca.crt``;
* **a toleration of ``node.kubernetes.io/not-ready``**: the only node here is the GPU node,
  not ready while it boots. In a real cluster the controller runs on a CPU node (a system or
  control-plane pool) and needs only the manifest's own tolerations.

The token comes the 1.20 way: the controller-manager's token controller makes the service
account's token Secret and the kubelet mounts it (the test starts the controller-manager).
This module may not touch the host outside the paths it is given and the image cache.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

import yaml

from tests import packagingscripts
from tests.cluster.controlplane import CONTROLLER_YAML, ControlPlane
from tests.e2e.machine import Machine

REPO = Path(__file__).resolve().parents[2]
NAMESPACE = "nodeagent-system"
DEPLOYMENT = "nodeagent-controller"
SEED_DIR = "var/lib/seed"  # under the machine's root
ARCHIVE = "nodeagent-controller-image.tar"
NOT_READY = "node.kubernetes.io/not-ready"


def image_module() -> ModuleType:
    """packaging/image.py, loaded once (tests/packagingscripts.py)."""
    return packagingscripts.load("image")


def documents(source: Path = CONTROLLER_YAML) -> list[dict[str, Any]]:
    """The manifest's documents, as written."""
    return [d for d in yaml.safe_load_all(source.read_text()) if d]


def deployment_image(source: Path = CONTROLLER_YAML) -> str:
    """The image name the Deployment runs."""
    (dep,) = [d for d in documents(source) if d["kind"] == "Deployment"]
    return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])


def why_not() -> str:
    """Why the image cannot be built here ("" when it can)."""
    return str(image_module().why_not() or "")


def build(out: Path) -> Path:
    """The controller image under the Deployment's image name, as an archive at ``out``
    (``make image``'s build; its Debian base is cached)."""
    image = image_module()
    with tempfile.TemporaryDirectory(prefix="nodeagent-image-") as work:
        built = image.build_image(out, deployment_image(), image.CACHE, Path(work))
    return Path(built.path)


def seed(m: Machine, archive: Path) -> str:
    """A copy of ``archive`` under the machine's root (before boot); its path inside."""
    dest = m.root / SEED_DIR / ARCHIVE
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_bytes(archive.read_bytes())
    return f"/{SEED_DIR}/{ARCHIVE}"


def load(m: Machine, inside: str) -> str:
    """``docker load`` of the seeded archive in the machine (once its docker runs)."""
    r = m.run("docker", "load", "-i", inside, timeout=180, check=True)
    return r.stdout.strip()


def manifests(api_port: int, source: Path = CONTROLLER_YAML) -> list[dict[str, Any]]:
    """The ConfigMap and Deployment of ``source`` with this machine's changes (the module
    docstring says why each)."""
    out = []
    for doc in documents(source):
        if doc["kind"] == "ConfigMap":
            out.append(doc)
        elif doc["kind"] == "Deployment":
            dep = copy.deepcopy(doc)
            pod = dep["spec"]["template"]["spec"]
            pod["hostNetwork"] = True  # e2e: no CNI/kube-proxy; the API server is on loopback
            pod["tolerations"] = [
                *pod.get("tolerations", []),
                # e2e: the only node is the (booting) GPU node; in a cluster, a CPU node
                {"key": NOT_READY, "operator": "Exists"},
            ]
            (container,) = pod["containers"]
            container["env"] = [
                *container.get("env", []),
                # e2e: in-cluster config's two variables, pointing at the loopback API server
                {"name": "KUBERNETES_SERVICE_HOST", "value": "127.0.0.1"},
                {"name": "KUBERNETES_SERVICE_PORT", "value": str(api_port)},
            ]
            out.append(dep)
    return out


def apply(plane: ControlPlane, source: Path = CONTROLLER_YAML) -> list[str]:
    """Every document of ``source`` into the cluster (RBAC as written, the ConfigMap and the
    Deployment with :func:`manifests`' changes); ``Kind/name`` of each."""
    made = plane.apply_controller_rbac(source)
    for doc in manifests(plane.port, source):
        kind, name = doc["kind"], doc["metadata"]["name"]
        path = {
            "ConfigMap": f"/api/v1/namespaces/{NAMESPACE}/configmaps",
            "Deployment": f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments",
        }[kind]
        plane.must(plane.request("POST", path, doc), 201)
        made.append(f"{kind}/{name}")
    return made


def pods(plane: ControlPlane) -> list[dict[str, Any]]:
    """The Deployment's pods."""
    r = plane.get(
        f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app.kubernetes.io/name%3D{DEPLOYMENT}"
    )
    return list(r.body.get("items") or []) if r.status == 200 else []


def running(plane: ControlPlane) -> bool:
    """One of the Deployment's pods runs, its container started."""
    for p in pods(plane):
        status = p.get("status") or {}
        started = [c for c in status.get("containerStatuses") or [] if c.get("ready")]
        if status.get("phase") == "Running" and started:
            return True
    return False


def logs(m: Machine) -> str:
    """The controller container's stderr (its structlog lines), through the machine's docker."""
    ids = m.run(
        "docker", "ps", "-aq", "--filter", "label=io.kubernetes.container.name=controller"
    ).stdout.split()
    return m.run("docker", "logs", ids[0]).stderr if ids else ""
