"""A simulated GPU node whose agent talks to the real control plane (``controlplane.py``).

It is ``tests/sandbox.py``'s node (the simulated NVML, ``--root`` and ``--config`` in a temp
dir, no dockerd: ``runtime.engine: none``, the API paths are what these tests prove) with the
test API server swapped for the real one: the agent's ``/etc/kubernetes/kubelet.conf`` holds a
client certificate of ``system:node:NAME`` from the control plane's CA, and the kubelet's part
(registering the Node from the args file, the device plugin's ``nvidia.com/gpu`` capacity) is
done with the admin identity. This module may not start control-plane processes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

from tests.cluster.controlplane import ControlPlane, node_identity
from tests.sandbox import Sandbox


class ClusterNode(Sandbox):
    """One simulated node, its agent's credential a node certificate of ``plane``."""

    def __init__(
        self,
        base: Path,
        plane: ControlPlane,
        profile_name: str = "h100x8",
        *,
        lib: Optional[Path] = None,
        node: str = "gpu-node-1",
    ) -> None:
        super().__init__(base, profile_name, docker=False, lib=lib, node=node)
        self.plane = plane
        self.kubeconfig = self.root / "etc/kubernetes/kubelet.conf"

    def start(self, **config: Any) -> ClusterNode:
        (self.root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
        (self.root / "sys/class/dmi/id/product_name").write_text("DGX H100\n")
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (self.root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
        boot = self.root / "proc/sys/kernel/random/boot_id"
        boot.parent.mkdir(parents=True, exist_ok=True)
        boot.write_text("7c1c3b2e-cluster-boot-1\n")
        self.plane.kubeconfig(node_identity(self.node), self.kubeconfig)
        self.write_config(**config)
        return self

    def stop(self) -> None:
        """Nothing of its own runs (the control plane is the fixture's)."""

    def gpus(self) -> int:
        return len(json.loads(self.profile.read_text()).get("gpus", []))

    def register(self, gpus: Optional[int] = None) -> dict[str, Any]:
        """Create the Node as the kubelet would from the agent's args file (labels, taints),
        with the admin identity; ``gpus`` is the device plugin's ``nvidia.com/gpu``
        (default: every GPU of the profile; 0 advertises none yet)."""
        labels: dict[str, str] = {"kubernetes.io/hostname": self.node}
        taints: list[dict[str, str]] = []
        for a in self.kubelet_args():
            if a.startswith("--node-labels="):
                for kv in a.split("=", 1)[1].split(","):
                    key, _, value = kv.partition("=")
                    labels[key] = value
            if a.startswith("--register-with-taints="):
                for t in a.split("=", 1)[1].split(","):
                    kv, effect = t.rsplit(":", 1)
                    key, _, value = kv.partition("=")
                    taints.append({"key": key, "value": value, "effect": effect} if value else
                                  {"key": key, "effect": effect})  # fmt: skip
        gpus = self.gpus() if gpus is None else gpus
        capacity = {"cpu": "8", "memory": "64Gi", "pods": "110"}
        if gpus:
            capacity["nvidia.com/gpu"] = str(gpus)
        return self.plane.create_node(self.node, labels=labels, taints=taints, capacity=capacity)

    def node_object(self) -> dict[str, Any]:
        """The Node as the API server holds it (it must exist)."""
        node = self.plane.node(self.node)
        assert node is not None, f"no Node {self.node}"
        return node

    def condition(self, ctype: str = "nvidia.com/GPUReady") -> dict[str, Any]:
        """The Node's condition ``ctype`` ({} when absent or no Node)."""
        node = self.plane.node(self.node) or {}
        for c in (node.get("status") or {}).get("conditions") or []:
            if c.get("type") == ctype:
                return dict(c)
        return {}

    def taint_keys(self) -> list[str]:
        node = self.plane.node(self.node) or {}
        return [t["key"] for t in (node.get("spec") or {}).get("taints") or []]
