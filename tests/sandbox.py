"""A simulated GPU node in a temp dir: what the demo runs and what the agent tests start.

Everything is real but the GPU and the kubelet: the real pynvml loads the simulated
``libnvidia-ml.so.1`` (tests/fakenvml) answering from a real-hardware profile; a real
dockerd (when this machine can run one) owns ``root/etc/docker/daemon.json``; the test API
server (tests/kubeapi) listens on loopback with real TLS and NodeRestriction, and the
agent's credential is a node certificate in ``root/etc/kubernetes/kubelet.conf``. The
kubelet's part — registering the Node with the labels and taints from its extra-args
file, the device plugin advertising ``nvidia.com/gpu`` — is :meth:`Sandbox.register`.

The machine's own /etc is never touched: the agent runs with ``--root`` and ``--config``
inside the sandbox.

    python -m tests.sandbox [PROFILE]     the demo (scripts/demo)
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Optional

if __package__ in (None, ""):  # run as a script
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.dockerd import BASE_CONFIG, Dockerd, needs_dockerd, write_runtime_standin
from tests.fakenvml.build import build, profile
from tests.kubeapi import KubeAPIServer

REPO = Path(__file__).resolve().parents[1]
NODE = "gpu-node-1"


class Sandbox:
    """One simulated node. ``start()`` brings up its parts, ``stop()`` removes them."""

    def __init__(
        self,
        base: Path,
        profile_name: str = "h100x8",
        *,
        docker: bool = True,
        lib: Optional[Path] = None,
        node: str = NODE,
    ) -> None:
        self.base = base
        self.node = node
        self.config_path = base / "config.yaml"
        self.profile = base / "profile.json"  # a copy: tests edit it (lose a GPU ...)
        self.events = base / "xid-events"  # lines "GPU XID" appended = NVML XID events
        base.mkdir(parents=True, exist_ok=True)
        shutil.copy(profile(profile_name), self.profile)
        self.events.touch()
        self.lib = lib or build(base / "lib")
        self.srv = KubeAPIServer(base / "kubeapi")
        self.dockerd: Optional[Dockerd] = None
        self.docker_note = ""
        if docker:
            reason = needs_dockerd()
            if reason:
                self.docker_note = reason
            else:
                # Unix socket paths are short: dockerd's own dir lives under /tmp.
                self.dockerd = Dockerd(Path(tempfile.mkdtemp(prefix="nsb.", dir="/tmp")))
        # With a dockerd, the agent's --root is the one that dockerd reads its config from
        # (and that `tests/dockerd.py restart` finds again from dockerd's base dir).
        self.root = self.dockerd.root if self.dockerd is not None else base / "root"

    # --- lifecycle ----------------------------------------------------------------------

    def start(self, **config: Any) -> Sandbox:
        (self.root / "sys/class/dmi/id").mkdir(parents=True, exist_ok=True)
        (self.root / "sys/class/dmi/id/product_name").write_text("DGX H100\n")
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (self.root / "etc/os-release").write_text('ID=debian\nVERSION_ID="12"\n')
        boot = self.root / "proc/sys/kernel/random/boot_id"
        boot.parent.mkdir(parents=True, exist_ok=True)
        boot.write_text("7c1c3b2e-sandbox-boot-1\n")
        self.srv.start()
        kc = self.root / "etc/kubernetes/kubelet.conf"
        kc.parent.mkdir(parents=True, exist_ok=True)
        self.srv.node_kubeconfig(kc, self.node)
        if self.dockerd is not None:
            write_runtime_standin(self.root)
            self.dockerd.config.parent.mkdir(parents=True, exist_ok=True)
            self.dockerd.config.write_text(
                json.dumps({"insecure-registries": ["10.0.0.5:5000"], **BASE_CONFIG}, indent=2)
                + "\n"
            )
            if not self.dockerd.start():
                raise RuntimeError(f"dockerd did not start: {self.dockerd.log.read_text()[-2000:]}")
        self.write_config(**config)
        return self

    def stop(self) -> None:
        if self.dockerd is not None:
            self.dockerd.teardown()
        self.srv.stop()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- the agent ----------------------------------------------------------------------

    def config(self, **overrides: Any) -> dict[str, Any]:
        """The agent's config for this sandbox, ``overrides`` merged per top-level key."""
        runtime: dict[str, Any] = {"engine": "none"}
        if self.dockerd is not None:
            runtime = {
                "engine": "docker",
                "verify_timeout_s": 20,
                "docker": {
                    "pidfile": "/run/docker.pid",
                    "host": self.dockerd.host,
                    "restart_command": [
                        sys.executable,
                        str(REPO / "tests" / "dockerd.py"),
                        "restart",
                        str(self.dockerd.base),
                    ],
                },
            }
        cfg: dict[str, Any] = {
            "node_name": self.node,
            "nvml_library": str(self.lib),
            "runtime": runtime,
            "kube": {"wait_for_node_s": 20, "api_deadline_s": 20},
            "daemon": {"metrics_listen": "", "state_file": "/var/lib/nodeagent/state.json"},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key] = {**cfg[key], **value}
            else:
                cfg[key] = value
        return cfg

    def write_config(self, **overrides: Any) -> Path:
        import yaml

        self.config_path.write_text(yaml.safe_dump(self.config(**overrides), sort_keys=False))
        return self.config_path

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "FAKE_NVML_PROFILE": str(self.profile),
            "FAKE_NVML_EVENTS": str(self.events),
            "COLUMNS": "120",
            **extra,
        }

    def argv(self, *args: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "nodeagent",
            "--root",
            str(self.root),
            "--config",
            str(self.config_path),
            *args,
        ]

    def nodeagent(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.argv(*args),
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=REPO,
        )

    # --- the kubelet's part -------------------------------------------------------------

    def kubelet_args(self) -> list[str]:
        """The kubelet's extra args as systemd would expand them from the args file."""
        path = self.root / "etc/default/kubelet"
        value = ""
        text = path.read_text() if path.exists() else ""  # no file: a kubelet without extras
        for line in text.splitlines():
            if line.startswith("KUBELET_EXTRA_ARGS="):
                value = " ".join(shlex.split(line.split("=", 1)[1]))
        return value.split()

    def register(self, gpus: Optional[int] = None) -> dict[str, Any]:
        """Register the Node as the kubelet would from its args; ``gpus`` is what the device
        plugin advertises (default: every GPU in the profile)."""
        labels: dict[str, str] = {}
        taints: list[dict[str, Any]] = []
        for a in self.kubelet_args():
            if a.startswith("--node-labels="):
                labels = dict(kv.split("=", 1) for kv in a.split("=", 1)[1].split(","))
            if a.startswith("--register-with-taints="):
                for t in a.split("=", 1)[1].split(","):
                    kv, effect = t.rsplit(":", 1)
                    key, _, value = kv.partition("=")
                    taints.append({"key": key, "value": value, "effect": effect} if value else
                                  {"key": key, "effect": effect})  # fmt: skip
        if gpus is None:
            gpus = len(json.loads(self.profile.read_text()).get("gpus", []))
        capacity = {"cpu": "8", "memory": "64Gi", "pods": "110", "nvidia.com/gpu": str(gpus)}
        return self.srv.create_node(self.node, labels=labels, taints=taints, capacity=capacity)

    def admin_kubeconfig(self) -> Path:
        """A cluster-admin credential for the test API server (written once)."""
        kc = self.base / "admin.kubeconfig"
        if not kc.exists():
            self.srv.admin_kubeconfig(kc)
        return kc

    def lift_startup_taint(self, timeout_s: float = 20.0) -> bool:
        """Run `nodeagent controller` (admin credential) until the startup taint is gone."""
        import time

        kc = self.admin_kubeconfig()
        proc = subprocess.Popen(
            [sys.executable, "-m", "nodeagent", "controller", "--kubeconfig", str(kc)],
            env=self.env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                node = self.srv.get_node(self.node) or {}
                if not any(
                    t.get("key", "").startswith("readiness.k8s.io/")
                    for t in (node.get("spec") or {}).get("taints") or []
                ):
                    return True
                time.sleep(0.1)
            return False
        finally:
            proc.terminate()
            proc.wait(10)

    def kubectl(self, *args: str) -> str:
        kc = self.admin_kubeconfig()
        if shutil.which("kubectl") is None:
            return "(kubectl is not installed here: skipped)\n"
        r = subprocess.run(
            ["kubectl", "--kubeconfig", str(kc), *args], capture_output=True, text=True, timeout=60
        )
        return r.stdout + r.stderr


def demo(profile_name: str) -> int:
    """The README's first command: bootstrap a simulated node end to end, then look at it."""
    base = Path(tempfile.mkdtemp(prefix="nodeagent-demo."))
    box = Sandbox(base, profile_name, docker=os.geteuid() == 0)
    if box.dockerd is None:
        print(f"note: no real dockerd ({box.docker_note or 'needs root'}): runtime.engine none\n")
    try:
        box.start()

        def step(title: str, *args: str) -> int:
            print(f"\n$ nodeagent {' '.join(args)}    # {title}", flush=True)
            r = box.nodeagent(*args)
            sys.stdout.write(r.stdout)
            if r.returncode != 0:
                sys.stdout.write(r.stderr[-3000:])
            print(f"(exit {r.returncode})")
            return r.returncode

        print(f"sandbox: {base}  (--root {box.root}; API server {box.srv.url})")
        print(f"simulated GPU profile: {profile_name}")
        rc = step("before the kubelet: runtime + kubelet args", "apply", "--phase", "bootstrap")
        print("\n# the kubelet registers the Node from its args; the device plugin advertises GPUs")
        box.register()
        rc = rc or step("after registration: labels, GPUReady, event", "apply", "--phase", "report")
        rc = rc or step("again: nothing to change", "apply")
        print("\n# the cluster's controller (deploy/controller.yaml) lifts the startup taint")
        box.lift_startup_taint()
        rc = rc or step("the doctor", "check")
        cols = "gpu-type,nvidia.com/gpu.product,nvidia.com/gpu.count,nvidia.com/cuda.driver.major"
        print(f"\n$ kubectl get node {box.node} -L {cols}")
        print(box.kubectl("get", "node", box.node, "-L", cols))
        print(f"$ kubectl describe node {box.node}   (conditions, taints, events)")
        described = box.kubectl("describe", "node", box.node)
        print(described)
        return rc
    finally:
        box.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(demo(sys.argv[1] if len(sys.argv) > 1 else "h100x8"))
