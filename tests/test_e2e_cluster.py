"""The seeds' whole flow on real Kubernetes binaries: boot → GPU pod running (issue 13, item 2).

A booted Debian machine (systemd-nspawn, tests/e2e/machine.py) with the agent's package baked
in, the simulated GPU (8× H100) and a **real kubelet 1.20.2** (dockershim, the machine's docker;
tests/e2e/realkubelet.py says what these machines need for it). Real etcd, kube-apiserver
(Node,RBAC + NodeRestriction) and kube-scheduler (tests/cluster/) run in the machine's network
namespace, started before it boots, as a cluster's control plane is there before a node
joins. A device-plugin peer (tests/deviceplugin_peer.py, the kubelet's v1beta1 API over
grpcio) serves the simulated GPUs' UUIDs through the machine's device-plugins directory, bind-
mounted from the host, so the **kubelet itself** advertises ``nvidia.com/gpu``.
``nodeagent controller`` runs **as a pod of deploy/controller.yaml** on that kubelet (issue 14,
item 2): the image ``make image`` builds, ``docker load``-ed in the machine under the
Deployment's image name; the manifest's RBAC, ConfigMap and Deployment applied as written,
with the changes this single-node machine needs (host network, the API server's loopback
address for the in-cluster config, a not-ready toleration: tests/e2e/controllerpod.py says
why each); kube-controller-manager runs the Deployment and signs the service account's token,
which the kubelet mounts.

Then, with nothing driven by hand: the agent's bootstrap (before the kubelet) puts the nvidia
runtime into docker and the labels and startup taint into the kubelet's args; the kubelet
registers the Node with them; the seeds' pod (``limits: nvidia.com/gpu: 1``) stays Pending on
the untolerated taint; the device plugin registers, the agent reports GPUReady, the controller
pod lifts the taint (the audit log shows the patch by its service account), the real
scheduler binds the pod, the kubelet runs it through the nvidia runtime stand-in with the
allocated GPU's UUID in ``NVIDIA_VISIBLE_DEVICES``. A second pod
asking for 9 GPUs stays Pending on "Insufficient nvidia.com/gpu" — the scheduler counts what
the kubelet advertises. The agent's metrics say which pod holds the GPU (the real kubelet's
pod-resources API). Times from the machine's start are printed and kept for
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Callable, NamedTuple, Optional

import pytest

from tests.cluster.build import BuildError, binaries
from tests.cluster.controlplane import ADMIN, CONTROLLER, ControlPlane, node_identity
from tests.deviceplugin_peer import DevicePluginPeer
from tests.e2e import controllerpod, realkubelet
from tests.e2e.machine import Machine, in_netns, install_kubelet_conf, named_netns
from tests.fakenvml.build import profile
from tests.realparts import skip_or_fail
from tests.test_boot import (
    NODE,
    deb,
    fakenvml,
    prepare,
    pristine,
    timings_file,
    user_data_from_url_example,
)

__all__ = ["deb", "fakenvml", "pristine"]  # module fixtures shared with test_boot

CONDITION = "nvidia.com/GPUReady"
TAINT = "readiness.k8s.io/nvidia-gpu-not-ready"

SCRAPE = (
    "import urllib.request as u; "
    "print(u.urlopen('http://127.0.0.1:9410/metrics', timeout=5).read().decode())"
)

pytestmark = [pytest.mark.root, pytest.mark.boot, pytest.mark.cluster]

AGENT_CONFIG = """\
# the real-cluster e2e: docker (the kubelet's dockershim drives it), defaults otherwise
runtime:
  engine: docker
kube:
  kubeconfig: /etc/kubernetes/kubelet.conf
"""


def pod(name: str, gpus: int) -> dict[str, Any]:
    """The seeds' GPU pod (no registry, no CNI here: a local image, the host's network)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "hostNetwork": True,
            "automountServiceAccountToken": False,
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 1,
            # the not-ready taint (the kubelet's, the node lifecycle controller's) while it boots
            "tolerations": [{"key": "node.kubernetes.io/not-ready", "operator": "Exists"}],
            "containers": [
                {
                    "name": "cuda",
                    "image": realkubelet.POD_IMAGE,
                    "imagePullPolicy": "Never",
                    "command": [
                        "sh",
                        "-c",
                        "echo gpu-pod-ran NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES; "
                        "exec sleep 3600",
                    ],
                    "resources": {"limits": {"nvidia.com/gpu": str(gpus)}},
                }
            ],
        },
    }


class Flow:
    """The control plane's view, polled: when each step was first seen (s since boot)."""

    def __init__(self, plane: ControlPlane, machine: Machine) -> None:
        self.plane = plane
        self.machine = machine
        self.seen: dict[str, float] = {}
        self.pending_messages: list[str] = []
        self.watched: dict[str, Callable[[], bool]] = {}  # marked by every wait's polls

    def watch(self, what: str, probe: Callable[[], bool]) -> None:
        """Mark ``what`` when ``probe()`` first holds, polled while any step is waited for."""
        self.watched[what] = probe

    def since_boot(self) -> float:
        return time.monotonic() - self.machine.booted_at

    def mark(self, what: str) -> None:
        self.seen.setdefault(what, self.since_boot())

    def node(self) -> dict[str, Any]:
        r = self.plane.get(f"/api/v1/nodes/{NODE}")
        return r.body if r.status == 200 else {}

    def pod(self, name: str) -> dict[str, Any]:
        r = self.plane.get(f"/api/v1/namespaces/default/pods/{name}")
        return r.body if r.status == 200 else {}

    def scheduled_message(self, name: str) -> str:
        for c in (self.pod(name).get("status") or {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return str(c.get("message", ""))
        return ""

    def wait(self, what: str, probe: Callable[[], bool], timeout: float) -> float:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            msg = self.scheduled_message("gpu-pod")
            if msg and msg not in self.pending_messages:
                self.pending_messages.append(msg)
            for name, watched in list(self.watched.items()):
                if name not in self.seen and watched():
                    self.mark(name)
            if probe():
                self.mark(what)
                return self.seen[what]
            time.sleep(0.1)
        raise AssertionError(
            f"{what}: not within {timeout} s; seen {self.seen}; pending {self.pending_messages}\n"
            f"{self.plane.report(15)}\n--- kubelet ---\n"
            f"{self.machine.journal('-u', 'kubelet', '-n', '40')}\n--- agent ---\n"
            f"{self.machine.journal('-u', 'nodeagent', '-u', 'nodeagent-bootstrap', '-n', '40')}"
            f"\n--- controller pod ---\n{controllerpod.logs(self.machine)[-2000:]}"
        )


def condition(node: dict[str, Any]) -> dict[str, Any]:
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == CONDITION:
            return dict(c)
    return {}


def taints(node: dict[str, Any]) -> list[str]:
    return [t["key"] for t in (node.get("spec") or {}).get("taints") or []]


def install_credential(m: Machine, plane: ControlPlane) -> None:
    """/etc/kubernetes/kubelet.conf and its files, as ``kubeadm join`` leaves them."""
    install_kubelet_conf(m.root, plane.kubeconfig(node_identity(NODE)))


@pytest.fixture(scope="module")
def controller_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The controller image archive (``make image``'s build), named as the Deployment says."""
    reason = controllerpod.why_not()
    if reason:
        skip_or_fail("controller image build", reason)
    return controllerpod.build(tmp_path_factory.mktemp("image") / controllerpod.ARCHIVE)


class World(NamedTuple):
    machine: Machine
    plane: ControlPlane
    plugins: Path  # the kubelet's device-plugins directory, bind-mounted from here
    scenario: str
    image: str  # the controller image's archive, inside the machine


@pytest.fixture(params=["prebaked-image", "cloud-init-install"])
def world(
    request: pytest.FixtureRequest,
    pristine: Path,
    deb: Path,
    fakenvml: Path,
    controller_image: Path,
    tmp_path: Path,
) -> Iterator[World]:
    """The machine (the controller image's archive under its root), the control plane in
    its network (the scheduler and the controller-manager too), the device-plugins directory.

    ``prebaked-image``: the package is in the image and its units and the kubelet's are
    enabled; ``cloud-init-install``: cloud-init installs the .deb at first boot
    (cloud-init/install-from-url.yaml, its download a copy) and its runcmd starts the kubelet
    where the example joins the cluster."""
    try:
        bins = binaries()
    except BuildError as e:
        skip_or_fail("Kubernetes 1.20.2 binaries", str(e))
        raise
    # short paths: the sockets in them are limited to 107 bytes (pytest's tmp_path is deep)
    short = Path(tempfile.mkdtemp(prefix="kl.", dir="/tmp"))
    plugins, podres = short / "device-plugins", short / "pod-resources"
    plugins.mkdir()
    podres.mkdir()
    with named_netns(f"na-e2e-{os.getpid()}") as ns:
        m = Machine(
            pristine,
            Path(tempfile.mkdtemp(prefix="e2e.", dir="/tmp")),
            NODE,
            binds=(
                (bins.bin, realkubelet.KUBE_BIN, True),
                (plugins, "/var/lib/kubelet/device-plugins", False),
                (podres, "/var/lib/kubelet/pod-resources", False),
            ),
            netns=ns,
        )
        plane = ControlPlane(tmp_path / "plane", bins)
        try:
            m.prepare()
            if request.param == "cloud-init-install":
                prepare(m, deb, fakenvml, user_data=user_data_from_url_example(deb))
                realkubelet.install(m, NODE)
            else:
                prepare(m, deb, fakenvml)
                realkubelet.install(m, NODE)
                r = subprocess.run(
                    ["chroot", str(m.root), "dpkg", "-i", f"/var/lib/seed/{deb.name}"],
                    capture_output=True,
                    text=True,
                )
                assert r.returncode == 0, r.stdout + r.stderr
                (m.root / "etc/nodeagent/config.yaml").write_text(AGENT_CONFIG)
                units = ["nodeagent-bootstrap.service", "nodeagent.service", "kubelet.service"]
                subprocess.run(["chroot", str(m.root), "systemctl", "enable", *units], check=True)
            image = controllerpod.seed(m, controller_image)
            with in_netns(ns):  # this thread, and all it starts, in the machine's network
                plane.start()
                plane.start_scheduler()
                # the Deployment's pod, the service account's token Secret, node lifecycle
                plane.start_controller_manager()
                install_credential(m, plane)
                yield World(m, plane, plugins, request.param, image)
        finally:
            plane.stop()
            m.teardown()
            shutil.rmtree(short, ignore_errors=True)


def test_boot_to_gpu_pod_running_on_a_real_kubelet_and_scheduler(
    world: World,
) -> None:
    m, plane, plugins, scenario, image = world
    plane.must(
        plane.request(
            "POST",
            "/api/v1/namespaces/default/serviceaccounts",
            # the controller-manager makes it too; the GPU pod must not race it
            {"metadata": {"name": "default"}},
        ),
        201,
        409,
    )
    uuids = [g["uuid"] for g in json.loads(profile("h100x8").read_text())["gpus"]]
    peer: Optional[DevicePluginPeer] = None
    try:
        plane.must(plane.request("POST", "/api/v1/namespaces/default/pods", pod("gpu-pod", 1)))
        m.boot()
        flow = Flow(plane, m)
        # the images a registry would serve, once the machine's docker runs
        flow.wait("docker", lambda: m.unit_active("docker.service"), 60)
        realkubelet.import_images(m)
        # the controller's image, under the Deployment's name, before the Deployment exists
        loaded = controllerpod.load(m, image)
        assert controllerpod.deployment_image() in loaded, loaded
        flow.mark("controller image loaded")
        controllerpod.apply(plane)
        flow.watch("controller pod running", lambda: controllerpod.running(plane))
        flow.wait("Node registered", lambda: bool(flow.node()), 90)
        node = flow.node()
        assert TAINT in taints(node), taints(node)  # from the agent's args, at registration
        labels = node["metadata"]["labels"]
        assert labels["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3", labels
        flow.wait(
            "Pending on the startup taint",
            lambda: "had taint" in " ".join(flow.pending_messages),
            30,
        )
        assert not flow.pod("gpu-pod")["spec"].get("nodeName")

        # the device plugin registers with the kubelet, which advertises the GPUs itself
        flow.wait("kubelet.sock", lambda: (plugins / "kubelet.sock").exists(), 60)
        peer = DevicePluginPeer(plugins, uuids)
        peer.start(timeout=30)
        flow.wait(
            "nvidia.com/gpu in capacity",
            lambda: flow.node().get("status", {}).get("capacity", {}).get("nvidia.com/gpu") == "8",
            60,
        )
        flow.wait("GPUReady=True", lambda: condition(flow.node()).get("status") == "True", 90)
        flow.wait("controller pod running", lambda: controllerpod.running(plane), 90)
        flow.wait("taint lifted", lambda: TAINT not in taints(flow.node()), 60)
        flow.wait("pod bound", lambda: bool(flow.pod("gpu-pod")["spec"].get("nodeName")), 60)
        flow.wait(
            "pod running",
            lambda: (flow.pod("gpu-pod").get("status") or {}).get("phase") == "Running",
            120,
        )
        assert any("had taint {" + TAINT in msg for msg in flow.pending_messages), (
            flow.pending_messages
        )
        assert flow.seen["pod bound"] >= flow.seen["taint lifted"]
        assert flow.seen["controller pod running"] <= flow.seen["taint lifted"]

        # the container ran through the nvidia runtime with the GPU the plugin allocated
        def logs() -> str:
            ids = m.run(
                "docker", "ps", "-aq", "--filter", "label=io.kubernetes.container.name=cuda"
            ).stdout.split()
            return m.run("docker", "logs", ids[0]).stdout if ids else ""

        flow.wait("container output", lambda: "gpu-pod-ran" in logs(), 30)
        (allocated,) = peer.allocations
        assert logs().strip() == f"gpu-pod-ran NVIDIA_VISIBLE_DEVICES={allocated[0]}"
        assert allocated[0] in uuids
        calls = (m.root / "var/log/nvidia-runtime-calls").read_text()
        assert "create" in calls and "clamped oomScoreAdj to 0" in calls

        # the scheduler counts what the kubelet advertises: 9 GPUs do not fit on 8
        plane.must(plane.request("POST", "/api/v1/namespaces/default/pods", pod("too-big", 9)))
        flow.wait(
            "Insufficient nvidia.com/gpu",
            lambda: "Insufficient nvidia.com/gpu" in flow.scheduled_message("too-big"),
            30,
        )

        # the agent's metrics name the pod holding the GPU (the real kubelet's pod-resources)
        def scraped() -> str:
            r = m.run(
                "python3",
                "-c",
                SCRAPE,
            )
            return r.stdout

        index = uuids.index(allocated[0])
        flow.wait(
            "pod in the agent's metrics",
            lambda: f'gpu="{index}"' in scraped() and 'pod="gpu-pod"' in scraped(),
            90,
        )
        line = next(
            ln
            for ln in scraped().splitlines()
            if ln.startswith("DCGM_FI_DEV_GPU_UTIL") and f'gpu="{index}"' in ln
        )
        assert 'namespace="default"' in line and 'container="cuda"' in line, line

        # never a 403 for the agent (the node's identity) or the controller
        records = plane.settled()
        denied = [
            r
            for r in records
            if r.code == 403 and r.user in (f"system:node:{NODE}", CONTROLLER.user)
        ]
        assert denied == [], denied
        # the taint was lifted by the pod: the only holder of the service account's token
        patched = [
            r
            for r in records
            if r.user == CONTROLLER.user and r.verb == "patch" and r.resource == "nodes"
        ]
        assert any(r.name == NODE and r.code == 200 for r in patched), patched
        (ctl,) = controllerpod.pods(plane)
        assert ctl["spec"]["nodeName"] == NODE and ctl["spec"]["hostNetwork"] is True
        (status,) = ctl["status"]["containerStatuses"]
        assert status["restartCount"] == 0, status
        assert status["image"].endswith(controllerpod.deployment_image()), status
        ctl_logs = controllerpod.logs(m)
        assert "Traceback" not in ctl_logs and "forbidden" not in ctl_logs.lower(), ctl_logs
        print(
            f"\nreal cluster, {scenario}: machine start → "
            + " → ".join(f"{k} {v:.1f} s" for k, v in flow.seen.items())
        )
        old = json.loads(timings_file().read_text()) if timings_file().exists() else {}
        old[f"real-cluster {scenario}"] = {k: round(v, 2) for k, v in flow.seen.items()}
        timings_file().parent.mkdir(exist_ok=True)
        timings_file().write_text(json.dumps(old, indent=2))
    finally:
        if peer is not None:
            peer.stop()
    assert ADMIN.user  # the admin made the pods; the node and controller used their own
